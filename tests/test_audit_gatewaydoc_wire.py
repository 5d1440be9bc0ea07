"""An acceptance audit of README "Credits and the gateway" (and balance.proto's comments on the same calls), statement
by statement over the wire, on the edges the earlier audits (test_audit_credits*_wire, test_audit_holds*_wire,
test_audit_gateway*_wire, test_audit_topup*_wire, test_audit_burnorder_wire, test_audit_balancedoc_wire,
test_audit_holdretry_wire, test_audit_hold_ttl_wire) leave out: an event or a hold exactly exhausting a grant; a hold
larger than the balance, then a release and a retry after it was settled; every TTL edge (the maximum exactly, a
millisecond over it, a millisecond, nanos of a whole second); ReleaseReservation's refusals and the 128-character
quote; the notices of an event naming a released hold, an unknown 256-byte id, and an id over 256 bytes; an
AuthorizeBatches message whose in-band refusals answer credits_available "0" beside plain decisions answering the
credit of their products; one batch crossing a top-up threshold twice; the top-up policy's limits exactly at and one
step past each bound; a rollover's rounding, its `+` id and a share of 0; a settling event dated exactly at, or a
millisecond before, the expiry of the grant its hold is on. Amounts are worked out by hand in each docstring, and
every balance read through rows()/totals() is checked for conservation (per grant amount = drawn + remaining +
expired while usable, held counted in remaining; amount = drawn + expired + held once expired).

The catalogue is test_audit_credits2_wire's (`work` events feed `units`, `other` events feed `extra`, 1 credit a
unit) and a `gauges` card (catalogues()), one server for the file (`--close-grace off`: no period closes by itself), each test on customers of its own."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, preview, release, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits2_wire import (
    CARD_FROM_MS,
    catalogue,
    charges,
    customer,
    event,
    grant,
    hold,
    hold_request,
    new_grant,
    rows,
    totals,
    use,
)
from tests.test_audit_credits_wire import period_anchor_ms
from tests.test_audit_topups_wire import month_start_ms

DAY_MS = 86_400_000


def catalogues(client: TariffClient) -> None:
    """test_audit_credits2_wire's card, and `gauges`: event type `mix` feeds `mlevel` (LATEST of `level`) and `msum`
    (SUM of `n`), both at 1 credit a unit, so one `mix` event can give credit back and charge at once."""
    catalogue(client)
    pricing = client.pricing
    for product_id, aggregation, value_key in (("mlevel", pricing_pb2.LATEST, "level"), ("msum", pricing_pb2.SUM, "n")):
        product = pricing_pb2.Product(id=product_id, event_type="mix", aggregation=aggregation, value_key=value_key)
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="gauges", pricing_unit="credits"))
    rates = [pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price="1")) for p in ("mlevel", "msum")]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="gauges", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="gauges", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-gatewaydoc")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogues)


def refused(call: Callable[[], object]) -> tuple[str, list[str], str]:
    """(status name, the fields its violations name, its message) of a call that must fail."""
    with pytest.raises(TariffError) as refusal:
        call()
    error = refusal.value
    return error.code.name, [v.field for v in error.field_violations], error.details


def decide(client: TariffClient, request: balance_pb2.AuthorizeRequest) -> tuple[bool, str, str, str, str, str]:
    """(allowed, reason, estimated_cost, credits_available, reservation_id, message) of one unary Authorize."""
    answer = client.balance.Authorize(request)
    return (
        answer.allowed,
        answer.reason,
        answer.estimated_cost,
        answer.credits_available,
        answer.reservation_id,
        answer.message,
    )


def plain(customer_id: str, units: float, event_type: str = "work") -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(customer_id=customer_id, event_type=event_type, values={"n": units})


def releasing(client: TariffClient, customer_id: str, reservation_id: str) -> Callable[[], object]:
    request = balance_pb2.ReleaseReservationRequest(customer_id=customer_id, reservation_id=reservation_id)
    return lambda: client.balance.ReleaseReservation(request)


def notices(ack: usage_pb2.IngestAck) -> list[tuple[str, str, str, str]]:
    return [(n.transaction_id, n.reservation_id, usage_pb2.NoticeReason.Name(n.reason), n.message) for n in ack.notices]


def test_an_event_exactly_exhausting_a_grant_leaves_nothing_and_block_then_denies_even_usage_costing_0(
    server: ServerProcess,
) -> None:
    """BLOCK customer `exh` with one grant of 10. Authorize of 10 units: cost 10 = credit 10, OK (available 10 before
    it). The event of 10 draws all of it: drawn 10, remaining 0, nothing overage; period_charges 10. Then, with no
    credit available, proto AuthorizeResponse.estimated_cost: "Under BLOCK such usage is denied INSUFFICIENT_CREDIT
    while no credit is available to its products, as usage costing 0 is": 0 units (cost 0), an event type feeding no
    product (answered the whole balance, 0) and 10^-12 of a unit are each denied, available "0"."""
    with server.client() as client:
        customer(client, "exh", block=True)
        grant(client, "exh", "g", "10")
        assert decide(client, plain("exh", 10))[:4] == (True, "OK", "10", "10")
        use(client, event("exh-1", "exh", 10))
        assert rows(client, "exh") == {"g": ("10", "0", "0", "0")}
        assert totals(client, "exh") == ("0", "0", "0")
        assert charges(client, "exh") == ("10", "0")
        denied = "available credit does not cover this usage"
        assert decide(client, plain("exh", 0)) == (False, "INSUFFICIENT_CREDIT", "0", "0", "", denied)
        assert decide(client, plain("exh", 1, "feeds-nothing")) == (False, "INSUFFICIENT_CREDIT", "0", "0", "", denied)
        assert decide(client, plain("exh", 1e-12)) == (
            False,
            "INSUFFICIENT_CREDIT",
            "0.000000000001",
            "0",
            "",
            denied,
        )


def test_a_hold_of_exactly_the_credit_leaves_none_and_its_settlement_at_that_cost_draws_it_all(
    server: ServerProcess,
) -> None:
    """BLOCK customer `hx4` with 4 credits. A hold of 4 units holds all 4 (OK, available 4 - 4 = 0): any further
    hold, however small (10^-12), is denied and holds nothing. The settling event of 4 units gives the 4 back and draws
    4: drawn 4, remaining 0, held 0; charged 4, no overage; a release then finds the hold settled."""
    with server.client() as client:
        customer(client, "hx4", block=True)
        grant(client, "hx4", "g", "4")
        assert hold(client, "hx4", 4, "all") == (True, "OK", "4", "0", "all")
        assert rows(client, "hx4") == {"g": ("0", "4", "4", "0")}
        assert hold(client, "hx4", 1e-12, "pico") == (False, "INSUFFICIENT_CREDIT", "0.000000000001", "0", "")
        assert totals(client, "hx4") == ("4", "4", "0")
        assert notices(use(client, event("hx4-1", "hx4", 4, reservation_id="all"))) == []
        assert rows(client, "hx4") == {"g": ("4", "0", "0", "0")}
        assert charges(client, "hx4") == ("4", "0")
        code, fields, message = refused(releasing(client, "hx4", "all"))
        assert (code, fields) == ("FAILED_PRECONDITION", [])
        assert re.fullmatch(r"reservation 'all' was already settled at \d+: nothing is held", message), message


def test_under_allow_a_hold_larger_than_the_balance_then_a_release_and_a_retry_after_its_settlement(
    server: ServerProcess,
) -> None:
    """ALLOW customer `big` with 5 credits. A hold of 8 units: OVERAGE_ALLOWED, estimated_cost 8, the 5 there are held
    (available 0), the other 3 would be overage and hold nothing; its retry answers the same, with the overage
    message after "already held". The settling event costs 3: the 5 come back, 3 are drawn: drawn 3, remaining 2,
    nothing overage. A release is then FAILED_PRECONDITION ("already settled at T"), and a retry of the hold answers
    its decision and estimate again with the available credit as it is now (2), "already settled at T; nothing is
    held", the same T, holding nothing."""
    with server.client() as client:
        customer(client, "big", block=False)
        grant(client, "big", "g", "5")
        overage = "beyond available credit: billed as overage"
        first = decide(client, hold_request("big", 8, "b1"))
        assert first == (True, "OVERAGE_ALLOWED", "8", "0", "b1", overage)
        assert rows(client, "big") == {"g": ("0", "5", "5", "0")}
        again = decide(client, hold_request("big", 8, "b1"))
        already = "already held: this reservation was made by an earlier identical request"
        assert again == (True, "OVERAGE_ALLOWED", "8", "0", "b1", f"{already}; allowed {overage}")
        use(client, event("big-1", "big", 3, reservation_id="b1"))
        assert rows(client, "big") == {"g": ("3", "2", "0", "0")}
        assert charges(client, "big") == ("3", "0")
        code, _, message = refused(releasing(client, "big", "b1"))
        settled_at = re.fullmatch(r"reservation 'b1' was already settled at (\d+): nothing is held", message)
        assert code == "FAILED_PRECONDITION" and settled_at, message
        after = decide(client, hold_request("big", 8, "b1"))
        ended = f"this reservation was already settled at {settled_at[1]}; nothing is held; allowed {overage}"
        assert after == (True, "OVERAGE_ALLOWED", "8", "2", "b1", ended)
        assert totals(client, "big") == ("2", "0", "2")


@pytest.mark.parametrize(
    ("name", "ttl", "fault"),
    [
        ("max", Duration(seconds=3600), ""),
        ("max-and-1ms", Duration(seconds=3600, nanos=1_000_000), "must be at most 3600 s"),
        ("1ms", Duration(nanos=1_000_000), ""),
        ("999ms", Duration(nanos=999_000_000), ""),
        ("nanos-1e9", Duration(seconds=3599, nanos=1_000_000_000), "nanos must be from -999,999,999 to 999,999,999"),
        ("999999999ns", Duration(nanos=999_999_999), "must be a whole number of milliseconds"),
        ("minus-1s-1ms", Duration(seconds=-1, nanos=-1_000_000), "must be positive"),
        ("zero", Duration(), "must be positive"),
    ],
)
def test_a_ttl_at_each_edge_holds_or_is_refused_naming_reservation_ttl(
    server: ServerProcess, name: str, ttl: Duration, fault: str
) -> None:
    """README "TTL": at most --reservation-ttl-max-s (3,600 by default): 3,600 s exactly holds, a millisecond more
    is refused; whole milliseconds only (1 ms and 999 ms hold, 999,999,999 ns does not); nanos outside +-999,999,999
    are not a valid Duration; zero or negative are refused. Customer `ttl-<name>`, ALLOW, 10 credits: a hold of 1
    leaves 9 available (the maximum's is then released, 1 given back; a hold of 999 ms or less has expired by the
    time it is released: FAILED_PRECONDITION, 10 available again); a refused one holds nothing (10 available) and
    names reservation_ttl."""
    customer_id = f"ttl-{name}"
    with server.client() as client:
        customer(client, customer_id, block=False)
        grant(client, customer_id, "g", "10")
        request = hold_request(customer_id, 1, "h", ttl=ttl)
        if not fault:
            assert hold(client, customer_id, 1, "h", ttl=ttl) == (True, "OK", "1", "9", "h")
            if ttl.seconds == 3600:
                assert release(client, customer_id, "h") == "1"
                return
            assert wait_for(lambda: totals(client, customer_id) == ("10", "0", "10"), 10)
            code, _, message = refused(releasing(client, customer_id, "h"))
            assert code == "FAILED_PRECONDITION" and "was already expired at" in message, message
            return
        code, fields, message = refused(lambda: client.balance.Authorize(request))
        assert (code, fields) == ("INVALID_ARGUMENT", ["reservation_ttl"]) and fault in message, message
        assert totals(client, customer_id) == ("10", "0", "10")


def test_release_refusals_name_their_field_and_quote_at_most_128_characters_of_the_id(server: ServerProcess) -> None:
    """README "Releasing": a reservation_id over 256 bytes is INVALID_ARGUMENT naming reservation_id (an empty one
    too: proto "Required"), an empty customer_id names customer_id; an id the customer does not have is NOT_FOUND
    "customer 'rq' has no reservation '...'", quoting its first 128 characters, "…" after the quote when cut (a
    200-character id), whole when it has exactly 128. The 1 credit held by `kept` stays held throughout."""
    with server.client() as client:
        customer(client, "rq", block=False)
        grant(client, "rq", "g", "3")
        assert hold(client, "rq", 1, "kept")[:2] == (True, "OK")
        assert refused(releasing(client, "rq", "x" * 257))[:2] == ("INVALID_ARGUMENT", ["reservation_id"])
        assert refused(releasing(client, "rq", ""))[:2] == ("INVALID_ARGUMENT", ["reservation_id"])
        assert refused(releasing(client, "", "kept"))[:2] == ("INVALID_ARGUMENT", ["customer_id"])
        cut = refused(releasing(client, "rq", "y" * 200))
        assert cut == ("NOT_FOUND", [], f"customer 'rq' has no reservation '{'y' * 128}'…")
        whole = refused(releasing(client, "rq", "z" * 128))
        assert whole == ("NOT_FOUND", [], f"customer 'rq' has no reservation '{'z' * 128}'")
        assert totals(client, "rq") == ("3", "1", "2")


def test_events_naming_a_released_an_unknown_and_an_over_long_reservation(server: ServerProcess) -> None:
    """README "Settling": an event naming a hold that was released is rated like any event, its ack noting
    NOTICE_RESERVATION_RELEASED ("... was already released at T: the event was rated, nothing was released", T the
    release's time); one naming a 256-byte id the customer never held is rated, NOTICE_RESERVATION_UNKNOWN, the id
    quoted cut to 128 characters and "…"; one naming a 257-byte id is INVALID_EVENT naming reservation_id and not
    rated. ALLOW customer `nt` with 10 credits: `r` holds 2 and is released (2 given back), events of 2 and 3 draw 5
    (remaining 5, charges 5); the refused event of 4 changes nothing."""
    with server.client() as client:
        customer(client, "nt", block=False)
        grant(client, "nt", "g", "10")
        assert hold(client, "nt", 2, "r")[:2] == (True, "OK")
        assert release(client, "nt", "r") == "2"
        released = notices(use(client, event("nt-1", "nt", 2, reservation_id="r")))
        assert len(released) == 1 and released[0][:3] == ("nt-1", "r", "NOTICE_RESERVATION_RELEASED"), released
        pattern = r"reservation 'r' was already released at \d+: the event was rated, nothing was released"
        assert re.fullmatch(pattern, released[0][3]), released
        long_id = "u" * 256
        unknown = notices(use(client, event("nt-2", "nt", 3, reservation_id=long_id)))
        quoted = f"the customer has no reservation '{'u' * 128}'…: the event was rated, nothing was released"
        assert unknown == [("nt-2", long_id, "NOTICE_RESERVATION_UNKNOWN", quoted)]
        ack = client.ingest_batch([event("nt-3", "nt", 4, reservation_id="v" * 257)])
        assert ack.accepted == 0 and [(r.transaction_id, r.reason) for r in ack.rejected] == [
            ("nt-3", usage_pb2.INVALID_EVENT)
        ]
        assert "reservation_id" in ack.rejected[0].message, ack
        assert rows(client, "nt") == {"g": ("5", "5", "0", "0")}
        assert charges(client, "nt") == ("5", "0")


def test_one_authorize_batches_message_answers_refused_holds_0_and_plain_requests_their_products_credit(
    server: ServerProcess,
) -> None:
    """proto AuthorizeResponse.credits_available on AuthorizeBatches. BLOCK customer `ab`: `ex` 5 credits for
    `extra` only, `all` 2 for every product. One message, in order:
    q1 hold 1 of work as `h1` (units may draw `all` only: 2 - 1 = 1 left); q2 `h1` again with 2 units
    (RESERVATION_CONFLICT); q3 a TTL of 3,601 s, q4 a 257-byte id, q5 a reservation_id without reserve (each
    INVALID_REQUEST); q6 an unknown customer (UNKNOWN_CUSTOMER): each of q2-q6 answers cost and credit "0".
    Plain requests are decided when the message arrives, before its holds: q7 usage feeding no product answers the
    whole balance, 7; q8 work answers the credit `units` may draw, 2; q9 other answers 5 + 2 = 7; q10 a customer whose
    contract starts in 3 days, with 3 credits: NO_ACTIVE_CONTRACT, its whole balance 3. q11 an unnamed hold of 1 with
    the maximum TTL takes `all`'s last credit, id r-<32 hex>, 0 left; q12 a hold of 5 units then finds 0 for
    `units`: INSUFFICIENT_CREDIT, cost 5, credit 0. After it: `all` holds 2, `ex` nothing."""
    with server.client() as client:
        customer(client, "ab", block=True)
        grant(client, "ab", "ex", "5", products=("extra",))
        grant(client, "ab", "all", "2")
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="abfut", name="abfut"))
        open_contract(client, "abfut", "k-abfut", now_ms() + 3 * DAY_MS, rate_card_id="card")
        future = contracts_pb2.Grant(id="abfut.g", customer_id="abfut", kind=contracts_pb2.PROMOTIONAL, amount="3")
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=future))

        def ask(request_id: str, customer_id: str, units: float, event_type: str) -> balance_pb2.AuthorizeRequest:
            made = plain(customer_id, units, event_type)
            made.request_id = request_id
            return made

        unbound = ask("q5", "ab", 1, "work")
        unbound.reservation_id = "h9"
        requests = [
            hold_request("ab", 1, "h1", request_id="q1"),
            hold_request("ab", 2, "h1", request_id="q2"),
            hold_request("ab", 1, "h2", request_id="q3", ttl=Duration(seconds=3601)),
            hold_request("ab", 1, "x" * 257, request_id="q4"),
            unbound,
            hold_request("ab-nobody", 1, "n1", request_id="q6"),
            ask("q7", "ab", 1, "feeds-nothing"),
            ask("q8", "ab", 1, "work"),
            ask("q9", "ab", 1, "other"),
            ask("q10", "abfut", 1, "work"),
            hold_request("ab", 1, "", request_id="q11", ttl=Duration(seconds=3600)),
            hold_request("ab", 5, "h3", request_id="q12"),
        ]
        (result,) = client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)]))
        got = [(r.request_id, r.allowed, r.reason, r.estimated_cost, r.credits_available) for r in result.responses]
        assert got == [
            ("q1", True, "OK", "1", "1"),
            ("q2", False, "RESERVATION_CONFLICT", "0", "0"),
            ("q3", False, "INVALID_REQUEST", "0", "0"),
            ("q4", False, "INVALID_REQUEST", "0", "0"),
            ("q5", False, "INVALID_REQUEST", "0", "0"),
            ("q6", False, "UNKNOWN_CUSTOMER", "0", "0"),
            ("q7", True, "OK", "0", "7"),
            ("q8", True, "OK", "1", "2"),
            ("q9", True, "OK", "1", "7"),
            ("q10", False, "NO_ACTIVE_CONTRACT", "0", "3"),
            ("q11", True, "OK", "1", "0"),
            ("q12", False, "INSUFFICIENT_CREDIT", "5", "0"),
        ]
        assert re.fullmatch(r"r-[0-9a-f]{32}", result.responses[10].reservation_id), result.responses[10]
        assert [r.reservation_id for r in result.responses[:10]] == ["h1"] + [""] * 9
        assert rows(client, "ab") == {"ex": ("0", "5", "0", "0"), "all": ("0", "2", "2", "0")}


def test_one_batch_crossing_the_threshold_twice_buys_twice_each_the_exact_difference(server: ServerProcess) -> None:
    """README "Automatic top-up": "One batch that crosses the threshold twice buys twice (within the cap)". ALLOW
    customer `tw`, 10 credits; policy below 4 back to 20 at 0.37 a credit, at most 3 a period. One batch: 7 units
    leave 3 < 4: `top-up-<P>-1` of 20 - 3 = 17 credits (paid 17 x 0.37 = 6.29); 18 units draw the grant's 3 and 15
    of the top-up (it burns after every other grant), leaving 2 < 4: `top-up-<P>-2` of 18 (paid 6.66). Then: the
    grant drawn 10, top-up 1 drawn 15 (recognised 15 x 0.37 = 5.55), 2 left; top-up 2 untouched; available 20; no
    overage. The period's draft invoice owes top_up_purchases 6.29 + 6.66 = 12.95."""
    period_ms = month_start_ms()
    with server.client() as client:
        contract_id = customer(client, "tw", block=False)
        grant(client, "tw", "g", "10")
        policy = contracts_pb2.TopUpPolicy(threshold="4", recharge_to="20", price_per_credit="0.37", max_per_period=3)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        use(client, event("tw-1", "tw", 7), event("tw-2", "tw", 18))
        first, second = f"top-up-{period_ms}-1", f"top-up-{period_ms}-2"
        assert rows(client, "tw") == {
            "g": ("10", "0", "0", "0"),
            first: ("15", "2", "0", "0"),
            second: ("0", "18", "0", "0"),
        }
        balance = client.get_balance("tw")
        bought = {
            g.grant_id: (contracts_pb2.GrantKind.Name(g.kind), g.amount, g.recognized_revenue) for g in balance.grants
        }
        assert bought[first] == ("TOP_UP", "17", "5.55") and bought[second] == ("TOP_UP", "18", "0")
        assert all(not g.HasField("expires_at") for g in balance.grants)
        assert (balance.credits_available, balance.overage_amount) == ("20", "0")
        assert preview(client, "tw", period_ms).top_up_purchases == "12.95"


POLICY_EDGES: list[tuple[str, dict[str, object], str]] = [
    ("threshold 0", dict(threshold="0"), "top_up.threshold"),
    ("threshold equal to recharge_to", dict(threshold="20"), "top_up.threshold"),
    ("max_per_period 1,001", dict(max_per_period=1001), "top_up.max_per_period"),
    ("max_per_period 0", dict(max_per_period=0), "top_up.max_per_period"),
    ("threshold with 13 places", dict(threshold="0.0000000000001"), "top_up.threshold"),
    ("recharge_to with 13 places", dict(recharge_to="20.0000000000001"), "top_up.recharge_to"),
    ("price with 19 places", dict(price_per_credit="0.0000000000000000001"), "top_up.price_per_credit"),
    ("negative price", dict(price_per_credit="-0.000000000000000001"), "top_up.price_per_credit"),
]


def test_a_top_up_policy_at_each_bound_is_set_and_one_step_past_it_is_refused_naming_the_field(
    server: ServerProcess,
) -> None:
    """README "Automatic top-up": threshold above 0 and below recharge_to, max_per_period 1 to 1,000, threshold and
    recharge_to at most 12 decimal places, a price at most 18 and not negative. At each bound the policy is set
    (threshold 10^-12 below recharge_to 20.000000000001, price 0, at most 1,000 a period; then a price of 10^-18);
    one step past each is INVALID_ARGUMENT naming the field, and the policy set before is still the contract's."""
    with server.client() as client:
        contract_id = customer(client, "pe", block=False)

        def send(**fields: object) -> contracts_pb2.Contract:
            top_up = contracts_pb2.TopUpPolicy(threshold="4", recharge_to="20", price_per_credit="1", max_per_period=1)
            for name, value in fields.items():
                setattr(top_up, name, value)
            request = contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=top_up)
            answer: contracts_pb2.Contract = client.contracts.SetTopUpPolicy(request)
            return answer

        edge = send(
            threshold="0.000000000001", recharge_to="20.000000000001", price_per_credit="0", max_per_period=1000
        )
        assert (edge.top_up.threshold, edge.top_up.recharge_to, edge.top_up.max_per_period) == (
            "0.000000000001",
            "20.000000000001",
            1000,
        )
        finest = send(price_per_credit="0.000000000000000001").top_up
        assert (finest.threshold, finest.price_per_credit, finest.currency) == ("4", "0.000000000000000001", "USD")
        for label, fields, field in POLICY_EDGES:
            code, named, _ = refused(functools.partial(send, **fields))
            assert (code, named) == ("INVALID_ARGUMENT", [field]), label
        kept = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).top_up
        assert kept == finest


def test_a_rollover_rounds_down_to_a_picocredit_takes_a_plus_id_when_its_own_is_taken_and_a_share_of_0_makes_none(
    server: ServerProcess,
) -> None:
    """README "Rollover", at a period end already past: customer `rr`'s contract started two months ago on the 1st,
    so the current period P began this month's 1st; three grants started a day into the previous period roll at P.
    - `a`: 1 credit paid 1, fraction 0.333333333333333: 0.333333333333333 rounded down to 10^-12 = 0.333333333333 rolls
      into `rollover-rr.a-<P>`, which a PROMOTIONAL grant of `rr` already holds, so it is `rollover-rr.a-<P>+`; `a`
      drawn 0.333333333333 (what moved), expired 0.666666666667, and no revenue of its own (rolled credit is the
      ROLLOVER grant's);
    - `tiny`: 1 credit, fraction 10^-13: a share of 10^-13 rounds down to 0: no ROLLOVER grant, 1 expired, and the id
      `rollover-rr.tiny-<P>` stays free (a grant can then take it);
    - `full`: 3 credits paid 2, fraction 1: all 3 roll, nothing expired.
    Each ROLLOVER grant is usable from P until the end of the period after the one that ended (this period's end).
    Available, once `rollover-rr.tiny-<P>` is granted 1 too: 1 + 0.333333333333 + 3 + 1 = 5.333333333333."""
    period_ms = month_start_ms()
    with server.client() as client:
        open_contract(client, "rr", "k-rr", month_start_ms(2), rate_card_id="card")
        taken = f"rollover-rr.a-{period_ms}"
        squatter = contracts_pb2.Grant(id=taken, contract_id="k-rr", kind=contracts_pb2.PROMOTIONAL, amount="1")
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=squatter))
        started_ms = month_start_ms(1) + DAY_MS
        for name, amount, paid, fraction in (
            ("a", "1", "1", "0.333333333333333"),
            ("tiny", "1", "0", "0.0000000000001"),
            ("full", "3", "2", "1"),
        ):
            made = new_grant("rr", name, amount, paid=paid, starts_at_ms=started_ms)
            made.rollover_fraction = fraction
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        rolled_a, rolled_full = f"{taken}+", f"rollover-rr.full-{period_ms}"
        assert wait_for(lambda: rolled_full in rows(client, "rr"), 10)
        assert rows(client, "rr") == {
            rolled_a: ("0", "0.333333333333", "0", "0"),
            rolled_full: ("0", "3", "0", "0"),
            taken: ("0", "1", "0", "0"),
            "a": ("0.333333333333", "0", "0", "0.666666666667"),
            "tiny": ("0", "0", "0", "1"),
            "full": ("3", "0", "0", "0"),
        }
        balance = client.get_balance("rr")
        by_id = {g.grant_id: g for g in balance.grants}
        period_end_ms = balance.period_end.ToMilliseconds()
        for rolled in (rolled_a, rolled_full):
            assert contracts_pb2.GrantKind.Name(by_id[rolled].kind) == "ROLLOVER"
            assert (by_id[rolled].starts_at.ToMilliseconds(), by_id[rolled].expires_at.ToMilliseconds()) == (
                period_ms,
                period_end_ms,
            )
        assert by_id["rr.a"].recognized_revenue == "0"
        assert f"rollover-rr.tiny-{period_ms}" not in by_id
        free = contracts_pb2.Grant(
            id=f"rollover-rr.tiny-{period_ms}", contract_id="k-rr", kind=contracts_pb2.PROMOTIONAL, amount="1"
        )
        assert client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=free)).id == free.id
        assert totals(client, "rr") == ("5.333333333333", "0", "5.333333333333")


@pytest.mark.parametrize(
    ("name", "offset_ms", "grant_row", "overage"),
    [
        ("before", -1, ("2", "0", "0", "8"), "0"),
        ("at", 0, ("0", "0", "0", "10"), "2"),
    ],
)
def test_a_settling_event_dated_a_millisecond_before_the_expiry_draws_the_held_credit_and_one_dated_at_it_none(
    server: ServerProcess, name: str, offset_ms: int, grant_row: tuple[str, str, str, str], overage: str
) -> None:
    """README "Expiry and breakage": credit a reservation holds on an expired grant stays held (credits_held and
    credits_remaining, never available) until the hold ends; the settling event gets it back first and, dated
    before the expiry E, draws on it; one dated at or after E draws nothing from the grant. ALLOW customer
    `xe-<name>`, one grant of 10 expiring at E (1.5 s from now); a hold of 6 (TTL 120 s): 4 available. At E the 4
    unheld break: drawn 0, remaining 0, held 6, expired 4; totals 6 remaining, 6 held, 0 available. The event of 2
    units settling it:
    - dated E - 1 ms: draws 2 of the 6, the 4 left break: drawn 2, expired 8; no overage;
    - dated E: draws nothing from the grant, all 6 break: expired 10; the 2 are overage.
    Either way charges 2 and nothing is left."""
    customer_id = f"xe-{name}"
    with server.client() as client:
        customer(client, customer_id, block=False)
        expires_ms = now_ms() + 1500
        grant(client, customer_id, "g", "10", expires_at_ms=expires_ms)
        assert hold(client, customer_id, 6, "h", ttl=Duration(seconds=120)) == (True, "OK", "6", "4", "h")
        assert wait_for(lambda: rows(client, customer_id)["g"] == ("0", "0", "6", "4"), 10)
        assert totals(client, customer_id) == ("6", "6", "0")
        settle = event(f"{customer_id}-1", customer_id, 2, reservation_id="h", at_ms=expires_ms + offset_ms)
        assert notices(use(client, settle)) == []
        assert wait_for(lambda: rows(client, customer_id)["g"] == grant_row, 10), rows(client, customer_id)
        assert totals(client, customer_id) == ("0", "0", "0")
        assert charges(client, customer_id) == ("2", overage)


def mix(
    transaction_id: str, customer_id: str, level: float, units: float, reservation_id: str = ""
) -> usage_pb2.UsageEvent:
    values = {"level": level, "n": units}
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="mix",
        timestamp_ms=now_ms(),
        values=values,
        reservation_id=reservation_id,
    )


def mixed(customer_id: str, level: float, units: float, reservation_id: str = "") -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        customer_id=customer_id,
        event_type="mix",
        values={"level": level, "n": units},
        reserve=bool(reservation_id),
        reservation_id=reservation_id,
    )


@pytest.mark.parametrize("block", [False, True])
def test_an_estimate_of_0_that_gives_credit_back_to_one_grant_holds_what_it_charges_another(
    server: ServerProcess, block: bool
) -> None:
    """README "Credits and the gateway": a hold holds "what its charges would draw from each grant less what its
    refunds would give back to that grant: for usage that also gives credit back, such as a LATEST gauge falling
    beside a charge paid from another grant, an estimate of 0 may hold credit". Customer `est-<allow|block>` on
    `gauges`: `gL` 10 credits for `mlevel` only, `gS` 4 for `msum` only. level=5 is drawn from gL (5 left): 9
    available. `mix` level=2 n=3 would give gL 3 back and charge msum 3 (paid by gS): estimate -3 + 3 = 0.
    - Authorize: OK, 0, 9 available. A hold `h` of it: OK, estimate 0, holds 3 on gS (available 9 - 3 = 6).
    - The same usage again finds 1 in gS for msum's 3: under ALLOW, OVERAGE_ALLOWED (plain and held alike), the hold
      `h2` taking gS's last 1 (available 5); under BLOCK INSUFFICIENT_CREDIT (plain and held alike), credit to its
      products 5 + 1 = 6, nothing more held.
    - A `work` event feeds `units`, which `gauges` does not price: NO_APPLICABLE_RATE, answered the whole balance.
    - The event settling `h`: gS gets its 3 back and pays msum's 3 (drawn 3, 1 left, still held by `h2` under ALLOW);
      gL gets 3 back (drawn 2, remaining 8). Charges 5 - 3 + 3 = 5, none overage."""
    customer_id = f"est-{'block' if block else 'allow'}"
    with server.client() as client:
        customer(client, customer_id, block=block, rate_card_id="gauges")
        grant(client, customer_id, "gL", "10", products=("mlevel",))
        grant(client, customer_id, "gS", "4", products=("msum",))
        use(client, mix(f"{customer_id}-1", customer_id, 5, 0))
        assert decide(client, mixed(customer_id, 2, 3))[:4] == (True, "OK", "0", "9")
        assert decide(client, mixed(customer_id, 2, 3, "h"))[:5] == (True, "OK", "0", "6", "h")
        assert rows(client, customer_id) == {"gL": ("5", "5", "0", "0"), "gS": ("0", "4", "3", "0")}
        if block:
            assert decide(client, mixed(customer_id, 2, 3))[:4] == (False, "INSUFFICIENT_CREDIT", "0", "6")
            assert decide(client, mixed(customer_id, 2, 3, "h2"))[:5] == (False, "INSUFFICIENT_CREDIT", "0", "6", "")
        else:
            assert decide(client, mixed(customer_id, 2, 3))[:4] == (True, "OVERAGE_ALLOWED", "0", "6")
            assert decide(client, mixed(customer_id, 2, 3, "h2"))[:5] == (True, "OVERAGE_ALLOWED", "0", "5", "h2")
        left = "0" if block else "1"
        assert decide(client, plain(customer_id, 1))[1:4] == ("NO_APPLICABLE_RATE", "0", "6" if block else "5")
        assert notices(use(client, mix(f"{customer_id}-2", customer_id, 2, 3, "h"))) == []
        assert rows(client, customer_id) == {"gL": ("2", "8", "0", "0"), "gS": ("3", "1", left, "0")}
        assert charges(client, customer_id) == ("5", "0")


def test_held_credit_rolling_over_is_shared_out_rounded_down_cumulatively_remainder_first_then_holds_by_id(
    server: ServerProcess,
) -> None:
    """README "Held credit at a rollover": fraction x (remainder + held) rolls over; "Shares are rounded down
    cumulatively, the remainder first, then the holds by reservation id". Customer `cum`, ALLOW, whose period ends at
    E (4 s from now): grant `g` of 0.000000000003 (3 picocredits), fraction 0.5; `r2` then `r1` each hold one
    picocredit, one is free. At E 0.5 x 3 = 1.5 rounds down to 1 picocredit rolling, 2 breaking. Cumulatively: the
    remainder's 0.5 -> 0; with r1 (first by id, though made second) 1.0 -> 1: r1's share is 1; with r2 1.5 -> 1: r2's
    is 0. So `rollover-cum.g-<E>` holds 1 picocredit for r1, none free; `g` drawn 1 (moved), expired 2. Releasing
    r1 gives back 0.000000000001 (to the ROLLOVER grant), r2 "0"."""
    end_ms = (now_ms() // 1000 + 4) * 1000
    with server.client() as client:
        open_contract(client, "cum", "k-cum", period_anchor_ms(end_ms), rate_card_id="card")
        made = new_grant("cum", "g", "0.000000000003", starts_at_ms=now_ms() - 1000)
        made.rollover_fraction = "0.5"
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        ttl = Duration(seconds=600)
        assert hold(client, "cum", 1e-12, "r2", ttl=ttl) == (True, "OK", "0.000000000001", "0.000000000002", "r2")
        assert hold(client, "cum", 1e-12, "r1", ttl=ttl) == (True, "OK", "0.000000000001", "0.000000000001", "r1")
        rolled = f"rollover-cum.g-{end_ms}"
        assert wait_for(lambda: rolled in rows(client, "cum"), 15)
        assert rows(client, "cum") == {
            rolled: ("0", "0.000000000001", "0.000000000001", "0"),
            "g": ("0.000000000001", "0", "0", "0.000000000002"),
        }
        assert (release(client, "cum", "r1"), release(client, "cum", "r2")) == ("0.000000000001", "0")
        assert rows(client, "cum")[rolled] == ("0", "0.000000000001", "0", "0")
        assert totals(client, "cum") == ("0.000000000001", "0", "0.000000000001")


def test_in_band_bad_values_answer_the_whole_credit_and_a_hold_of_usage_feeding_no_product_holds_nothing(
    server: ServerProcess,
) -> None:
    """proto AuthorizeResponse.credits_available: "a request of a known customer denied before it is priced
    (... INVALID_REQUEST for a bad value) [is] answered the customer's whole available credit ... so under BLOCK
    usage feeding no product is allowed while the customer has any credit". BLOCK customer `iv`: `ex` 5 for `extra`,
    `all` 2: whole credit 7. On AuthorizeBatches, values n=NaN, n=inf, n=-1 and a hold with n=NaN are each
    INVALID_REQUEST, cost 0, credit 7; a hold of usage feeding no product is OK, costs 0, holds nothing (7 still
    available) and is a reservation (`nf`); unary Authorize refuses the bad values INVALID_ARGUMENT naming values."""
    with server.client() as client:
        customer(client, "iv", block=True)
        grant(client, "iv", "ex", "5", products=("extra",))
        grant(client, "iv", "all", "2")

        def ask(
            request_id: str, units: float, event_type: str = "work", hold_id: str = ""
        ) -> balance_pb2.AuthorizeRequest:
            made = plain("iv", units, event_type)
            made.request_id, made.reserve, made.reservation_id = request_id, bool(hold_id), hold_id
            return made

        requests = [
            ask("nan", float("nan")),
            ask("inf", float("inf")),
            ask("neg", -1),
            ask("nan-hold", float("nan"), hold_id="nn"),
            ask("nofeed-hold", 1, "feeds-nothing", "nf"),
        ]
        (result,) = client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)]))
        got = [
            (r.request_id, r.reason, r.estimated_cost, r.credits_available, r.reservation_id) for r in result.responses
        ]
        assert got == [
            ("nan", "INVALID_REQUEST", "0", "7", ""),
            ("inf", "INVALID_REQUEST", "0", "7", ""),
            ("neg", "INVALID_REQUEST", "0", "7", ""),
            ("nan-hold", "INVALID_REQUEST", "0", "7", ""),
            ("nofeed-hold", "OK", "0", "7", "nf"),
        ]
        assert totals(client, "iv") == ("7", "0", "7")
        for request in requests[:3]:
            request.request_id = ""
            assert refused(functools.partial(client.balance.Authorize, request))[:2] == ("INVALID_ARGUMENT", ["values"])
        assert release(client, "iv", "nf") == "0"


def test_a_hold_retried_under_another_request_id_is_the_same_hold_and_a_duplicate_event_naming_it_settles_nothing(
    server: ServerProcess,
) -> None:
    """README "Ids": the same request is the same event type, dimensions, values and TTL: a gateway's retry under a
    new request_id answers the same hold and holds nothing more. An event resent under a transaction id already
    accepted without a reservation_id is DUPLICATE_CONFLICT (different content) and settles nothing. ALLOW customer
    `rid`, 10 credits: `e1` draws 2 (8 left); `h` holds 3 (5 available), `k` 1 under request ids A and B (4
    available, held 4); e1 again naming `h` is refused; `h` and `k` still hold 3 + 1."""
    with server.client() as client:
        customer(client, "rid", block=False)
        grant(client, "rid", "g", "10")
        first = event("rid-1", "rid", 2)
        use(client, first)
        assert hold(client, "rid", 3, "h") == (True, "OK", "3", "5", "h")
        assert hold(client, "rid", 1, "k", request_id="A") == (True, "OK", "1", "4", "k")
        again = client.balance.Authorize(hold_request("rid", 1, "k", request_id="B"))
        assert (again.request_id, again.reservation_id, again.credits_available) == ("B", "k", "4")
        assert again.message == "already held: this reservation was made by an earlier identical request"
        resent = usage_pb2.UsageEvent()
        resent.CopyFrom(first)
        resent.reservation_id = "h"
        ack = client.ingest_batch([resent])
        assert [(r.transaction_id, r.reason) for r in ack.rejected] == [("rid-1", usage_pb2.DUPLICATE_CONFLICT)]
        assert rows(client, "rid") == {"g": ("2", "8", "4", "0")}
        assert charges(client, "rid") == ("2", "0")


def test_a_conflict_quotes_a_long_reservation_id_whole_through_every_authorize_call(server: ServerProcess) -> None:
    """README "Releasing" cuts a quoted reservation id to 128 characters in release and notice messages; "Ids": the
    same id with a different request is ALREADY_EXISTS ("reservation_id 'r1' is already used by a different request
    of this customer; nothing was held"), quoting the id whole as the request sent it (a 200-character one here),
    alike on Authorize, AuthorizeStream (which it ends) and in-band on AuthorizeBatches (RESERVATION_CONFLICT). ALLOW
    customer `lq`, 10 credits: the id holds 1 unit; each later request asks 2 and holds nothing (9 available)."""
    long_id = "L" * 200
    taken = f"reservation_id '{long_id}' is already used by a different request of this customer; nothing was held"
    with server.client() as client:
        customer(client, "lq", block=False)
        grant(client, "lq", "g", "10")
        assert hold(client, "lq", 1, long_id)[:2] == (True, "OK")
        assert refused(lambda: client.balance.Authorize(hold_request("lq", 2, long_id))) == (
            "ALREADY_EXISTS",
            [],
            taken,
        )
        streamed = hold_request("lq", 2, long_id, request_id="s1")
        code, _, message = refused(lambda: list(client.balance.AuthorizeStream(iter([streamed]))))
        assert (code, message) == ("ALREADY_EXISTS", taken)
        batch = balance_pb2.AuthorizeBatch(requests=[hold_request("lq", 2, long_id, request_id="b1")])
        (result,) = client.balance.AuthorizeBatches(iter([batch]))
        answer = result.responses[0]
        assert (answer.reason, answer.message) == ("RESERVATION_CONFLICT", taken)
        assert totals(client, "lq") == ("10", "1", "9")


def alerts_of(client: TariffClient, customer_id: str, count: int) -> list[alerts_pb2.Alert]:
    """The first `count` alerts of `customer_id` in WatchAlerts' log."""
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=20)
    got: list[alerts_pb2.Alert] = []
    for alert in stream:
        if alert.customer_id == customer_id:
            got.append(alert)
        if len(got) == count:
            stream.cancel()
            break
    return got


def test_event_alerts_carry_their_period_start_and_time_beside_what_was_bought_or_released(
    server: ServerProcess,
) -> None:
    """README alerts (and alerts.proto Alert.details): TOP_UP_EXECUTED details are grant_id and credits bought,
    RESERVATION_EXPIRED's reservation_id and released, each with period_start_ms (the billing period it counts in)
    and at_ms (the alert's time). ALLOW customer `ea`, contract from this month's start P, 10 credits; policy below 4
    back to 10, once a period. An event of 8 leaves 2 < 4: it buys `top-up-<P>-1` of 10 - 2 = 8, at the batch's
    time. Then `h` holds 3 for 200 ms (7 available, not below 4 and the period's one purchase made anyway) and
    expires by the clock, giving back 3, at or after its 200 ms."""
    period_ms = month_start_ms()
    with server.client() as client:
        contract_id = customer(client, "ea", block=False)
        grant(client, "ea", "g", "10")
        for kind in (alerts_pb2.TOP_UP_EXECUTED, alerts_pb2.RESERVATION_EXPIRED):
            client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id="ea", type=kind))
        policy = contracts_pb2.TopUpPolicy(threshold="4", recharge_to="10", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        before_use_ms = now_ms()
        use(client, event("ea-1", "ea", 8))
        after_use_ms = now_ms()
        before_hold_ms = now_ms()
        assert hold(client, "ea", 3, "h", ttl=Duration(nanos=200_000_000)) == (True, "OK", "3", "7", "h")
        bought, expired = alerts_of(client, "ea", 2)
        assert (alerts_pb2.AlertType.Name(bought.type), alerts_pb2.AlertType.Name(expired.type)) == (
            "TOP_UP_EXECUTED",
            "RESERVATION_EXPIRED",
        )
        bought_at, expired_at = int(bought.details["at_ms"]), int(expired.details["at_ms"])
        assert dict(bought.details) == {
            "grant_id": f"top-up-{period_ms}-1",
            "credits": "8",
            "period_start_ms": str(period_ms),
            "at_ms": str(bought_at),
        }
        assert dict(expired.details) == {
            "reservation_id": "h",
            "released": "3",
            "period_start_ms": str(period_ms),
            "at_ms": str(expired_at),
        }
        assert before_use_ms <= bought_at <= after_use_ms and bought_at == bought.time.ToMilliseconds()
        assert expired_at >= before_hold_ms + 200 and expired_at == expired.time.ToMilliseconds()


def test_an_empty_top_up_is_refused_naming_threshold_and_a_request_without_one_clears_the_policy(
    server: ServerProcess,
) -> None:
    """README "Automatic top-up": "a request without `top_up` clears it; a `top_up` without `threshold`, such as an
    empty one, is INVALID_ARGUMENT naming top_up.threshold, never a clearing". ALLOW customer `clr`, 10 credits,
    policy below 4 back to 10. An empty top_up is refused and the policy stays (an event of 7 leaves 3 < 4: it buys
    `top-up-<P>-1` of 10 - 3 = 7). A request without top_up clears it (the contract answers none). Then one batch:
    5 units draw the grant's 3 and 2 of the top-up (5 left), 3 more draw 3 of it: 2 left < 4, and nothing is bought,
    the policy being cleared: the grant drawn 10, the top-up 5, 2 available."""
    period_ms = month_start_ms()
    with server.client() as client:
        contract_id = customer(client, "clr", block=False)
        grant(client, "clr", "g", "10")
        policy = contracts_pb2.TopUpPolicy(threshold="4", recharge_to="10", price_per_credit="1", max_per_period=5)
        set_policy = contracts_pb2.SetTopUpPolicyRequest
        client.contracts.SetTopUpPolicy(set_policy(contract_id=contract_id, top_up=policy))
        empty = set_policy(contract_id=contract_id, top_up=contracts_pb2.TopUpPolicy())
        assert refused(lambda: client.contracts.SetTopUpPolicy(empty))[:2] == ("INVALID_ARGUMENT", ["top_up.threshold"])
        use(client, event("clr-1", "clr", 7))
        top_up = f"top-up-{period_ms}-1"
        assert rows(client, "clr") == {"g": ("7", "3", "0", "0"), top_up: ("0", "7", "0", "0")}
        cleared = client.contracts.SetTopUpPolicy(set_policy(contract_id=contract_id))
        assert not cleared.HasField("top_up"), cleared
        use(client, event("clr-2", "clr", 5), event("clr-3", "clr", 3))
        assert rows(client, "clr") == {"g": ("10", "0", "0", "0"), top_up: ("5", "2", "0", "0")}
        assert totals(client, "clr") == ("2", "0", "2")
