"""A third acceptance audit of README "Credits and the gateway" and "Watching balances and alerts" over the wire
(balance.proto, alerts.proto, contracts.proto), on the boundaries the earlier audits (test_audit_credits_wire.py,
test_audit_credits2_wire.py, test_audit_holds_wire.py, test_audit_alerts_wire.py, test_audit_topups_wire.py) leave
out: a cost exactly equal to the credit available (and one 10^-12 above it), a hold equal to the balance, an event
feeding two products one of whose grants is restricted, AuthorizeBatches and AuthorizeStream against Authorize for
the same request, many holds on one grant through a kill -9, a retried reservation id with a changed event type, and
alert rules at their exact thresholds, once, again, and across restarts. Every amount asserted is worked out by hand
from the docs (the arithmetic is in each docstring), never read back from the server; every GetBalance is checked
for conservation (tests/test_audit_credits2_wire.py's `conserved`).

Products (card `card`, credits): `units` (event type `work`, SUM of `n`) at 1 credit a unit; `tin` (event type
`call`, SUM of `in`) at 1 credit a unit and `tout` (event type `call`, SUM of `out`) at 2 credits a unit, so one
`call` event with in=a, out=b costs a + 2b. One server for the file (`--close-grace off`: no period closes by
itself), each test on customers of its own, contracts from this month's start. Grant ids are server-wide, so each is
`<customer>.<name>`, and rows() shows the name."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal, release, serving
from tests.serverproc import ServerFactory, ServerProcess, wait_for
from tests.test_audit_credits2_wire import CARD_FROM_MS, charges, customer, grant, rows, totals
from tests.test_audit_credits_wire import period_anchor_ms
from tests.test_audit_topups_wire import month_start_ms as month_start

STREAM_TIMEOUT_S = 20.0


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing
    for product_id, event_type, value_key in (("units", "work", "n"), ("tin", "call", "in"), ("tout", "call", "out")):
        product = pricing_pb2.Product(
            id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key=value_key
        )
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rates = [
        pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price))
        for product_id, price in (("units", "1"), ("tin", "1"), ("tout", "2"))
    ]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-gateway2")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


Answer = tuple[bool, str, str, str, str]


def request(
    customer_id: str,
    values: dict[str, float],
    *,
    event_type: str = "work",
    reservation_id: str = "",
    reserve: bool = False,
    ttl: Duration | None = None,
    request_id: str = "",
) -> balance_pb2.AuthorizeRequest:
    made = balance_pb2.AuthorizeRequest(
        request_id=request_id,
        customer_id=customer_id,
        event_type=event_type,
        values=values,
        reserve=reserve or bool(reservation_id),
        reservation_id=reservation_id,
    )
    if ttl is not None:
        made.reservation_ttl.CopyFrom(ttl)
    return made


def answer_of(answer: balance_pb2.AuthorizeResponse) -> Answer:
    return answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available, answer.reservation_id


def unary(client: TariffClient, made: balance_pb2.AuthorizeRequest) -> Answer:
    return answer_of(client.balance.Authorize(made))


def batched(client: TariffClient, *groups: list[balance_pb2.AuthorizeRequest]) -> list[balance_pb2.AuthorizeResponse]:
    """AuthorizeBatches, one message a group; the answers in order, each with its request's request_id."""
    messages = (balance_pb2.AuthorizeBatch(requests=group) for group in groups)
    results = list(client.balance.AuthorizeBatches(messages, timeout=STREAM_TIMEOUT_S))
    assert [len(r.responses) for r in results] == [len(g) for g in groups]
    answers = [a for r in results for a in r.responses]
    assert [a.request_id for a in answers] == [q.request_id for g in groups for q in g]
    return answers


def streamed(client: TariffClient, requests: list[balance_pb2.AuthorizeRequest]) -> list[balance_pb2.AuthorizeResponse]:
    answers = list(client.balance.AuthorizeStream(iter(requests), timeout=STREAM_TIMEOUT_S))
    assert [a.request_id for a in answers] == [q.request_id for q in requests]
    return answers


def work(
    transaction_id: str,
    customer_id: str,
    values: dict[str, float],
    *,
    event_type: str = "work",
    reservation_id: str = "",
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=now_ms(),
        values=values,
        reservation_id=reservation_id,
    )


def use(client: TariffClient, *events: usage_pb2.UsageEvent) -> list[tuple[str, str]]:
    """Ingests the events, all accepted; the ack's notices as (reservation_id, reason)."""
    ack = client.ingest_batch(list(events))
    assert ack.accepted == len(events), ack
    return [(n.reservation_id, usage_pb2.NoticeReason.Name(n.reason)) for n in ack.notices]


def test_under_block_a_cost_equal_to_the_credit_is_allowed_and_a_pico_more_is_denied(server: ServerProcess) -> None:
    """contracts.proto BLOCK: "Authorize denies once available credit is exhausted"; README: BLOCK contracts are
    denied "once credit would not cover it". One grant of 7.5. Authorize of 7.5 units: cost 7.5 x 1 = 7.5, exactly the
    7.5 available: covered, OK. 7.500000000001 units cost 7.500000000001, 10^-12 beyond: INSUFFICIENT_CREDIT, 7.5
    available. A hold of exactly 7.5 is allowed and leaves 7.5 - 7.5 = 0 available (remaining 7.5, held 7.5); then
    even 0 units (costing 0) is denied, "while no credit is available ... even usage that would cost nothing is", as
    a hold of 0 is. The event settling the hold with 7.5 units gives back 7.5 and draws 7.5: drawn 7.5, remaining
    0, no overage; charges 7.5."""
    with server.client() as client:
        customer(client, "eqb", block=True)
        grant(client, "eqb", "g", "7.5")
        assert unary(client, request("eqb", {"n": 7.5})) == (True, "OK", "7.5", "7.5", "")
        assert unary(client, request("eqb", {"n": 7.500000000001})) == (
            False,
            "INSUFFICIENT_CREDIT",
            "7.500000000001",
            "7.5",
            "",
        )
        assert unary(client, request("eqb", {"n": 7.500000000001}, reservation_id="over")) == (
            False,
            "INSUFFICIENT_CREDIT",
            "7.500000000001",
            "7.5",
            "",
        )
        assert totals(client, "eqb") == ("7.5", "0", "7.5")
        assert unary(client, request("eqb", {"n": 7.5}, reservation_id="all")) == (True, "OK", "7.5", "0", "all")
        assert totals(client, "eqb") == ("7.5", "7.5", "0")
        assert rows(client, "eqb") == {"g": ("0", "7.5", "7.5", "0")}
        assert unary(client, request("eqb", {"n": 0})) == (False, "INSUFFICIENT_CREDIT", "0", "0", "")
        assert unary(client, request("eqb", {"n": 0}, reservation_id="zero")) == (
            False,
            "INSUFFICIENT_CREDIT",
            "0",
            "0",
            "",
        )
        assert use(client, work("e1", "eqb", {"n": 7.5}, reservation_id="all")) == []
        assert rows(client, "eqb") == {"g": ("7.5", "0", "0", "0")}
        assert totals(client, "eqb") == ("0", "0", "0")
        assert charges(client, "eqb") == ("7.5", "0")


def test_under_allow_a_cost_equal_to_the_credit_is_ok_and_a_pico_more_is_overage(server: ServerProcess) -> None:
    """contracts.proto ALLOW; balance.proto reserve: "under ALLOW, when it is beyond the credit: the credit there
    is". One grant of 7.5. 7.5 units (cost 7.5 = available) are covered: OK, not OVERAGE_ALLOWED. 7.500000000001
    units are 10^-12 beyond: OVERAGE_ALLOWED. A hold of 7.500000000001 units holds the 7.5 there is (available 0);
    its settling event of 7.500000000001 units draws 7.5 and leaves 0.000000000001 of overage."""
    with server.client() as client:
        customer(client, "eqa", block=False)
        grant(client, "eqa", "g", "7.5")
        assert unary(client, request("eqa", {"n": 7.5})) == (True, "OK", "7.5", "7.5", "")
        assert unary(client, request("eqa", {"n": 7.500000000001})) == (
            True,
            "OVERAGE_ALLOWED",
            "7.500000000001",
            "7.5",
            "",
        )
        assert unary(client, request("eqa", {"n": 7.500000000001}, reservation_id="h")) == (
            True,
            "OVERAGE_ALLOWED",
            "7.500000000001",
            "0",
            "h",
        )
        assert rows(client, "eqa") == {"g": ("0", "7.5", "7.5", "0")}
        assert use(client, work("e1", "eqa", {"n": 7.500000000001}, reservation_id="h")) == []
        assert rows(client, "eqa") == {"g": ("7.5", "0", "0", "0")}
        assert charges(client, "eqa") == ("7.500000000001", "0.000000000001")


def call(customer_id: str, tokens_in: float, tokens_out: float, **fields: object) -> balance_pb2.AuthorizeRequest:
    """A `call` request: tin `tokens_in` at 1 and tout `tokens_out` at 2, so it costs tokens_in + 2 x tokens_out."""
    return request(customer_id, {"in": tokens_in, "out": tokens_out}, event_type="call", **fields)  # type: ignore[arg-type]


def test_under_block_an_event_of_two_products_is_covered_only_when_each_products_grants_cover_it(
    server: ServerProcess,
) -> None:
    """contracts.proto Grant.applicable_product_ids ("Products this grant may pay for"); balance.proto
    credits_available ("Credit available to this usage's products"); BLOCK denies once credit would not cover the
    usage. A `call` of in=3, out=2 costs 3 x 1 + 2 x 2 = 7.
    - `in-only`, 10 credits for tin only (priority 0): 10 are available to the call's products, but tout's 4 have
      no grant: INSUFFICIENT_CREDIT, cost 7, available 10.
    - `any`, 2 for every product (priority 1): tin's 3 from in-only, tout's 4 from any's 2, 2 uncovered: still
      denied, 12 available.
    - `any2`, 2 more (priority 2): tout's 4 = 2 + 2, covered: OK, 14 available.
    A hold of that call takes in-only 3, any 2, any2 2 (7 held) and leaves 14 - 7 = 7 available, all of it in-only's,
    which pays tin only: a `work` unit (product `units`, which in-only does not pay) then has 0 available and is
    denied, as is a call of out=1 (2 for tout, no grant left to pay it), while a call of in=7, out=0 (7 for tin) is
    OK with exactly the 7 there are. The event settling the hold draws what it held: in-only 3 (7 left), any 2, any2
    2; charges 7, no overage."""
    with server.client() as client:
        customer(client, "mpb", block=True)
        grant(client, "mpb", "in-only", "10", products=("tin",))
        assert unary(client, call("mpb", 3, 2)) == (False, "INSUFFICIENT_CREDIT", "7", "10", "")
        grant(client, "mpb", "any", "2", priority=1)
        assert unary(client, call("mpb", 3, 2)) == (False, "INSUFFICIENT_CREDIT", "7", "12", "")
        assert unary(client, call("mpb", 3, 2, reservation_id="early")) == (False, "INSUFFICIENT_CREDIT", "7", "12", "")
        grant(client, "mpb", "any2", "2", priority=2)
        assert unary(client, call("mpb", 3, 2)) == (True, "OK", "7", "14", "")
        assert unary(client, call("mpb", 3, 2, reservation_id="mp")) == (True, "OK", "7", "7", "mp")
        assert rows(client, "mpb") == {
            "in-only": ("0", "10", "3", "0"),
            "any": ("0", "2", "2", "0"),
            "any2": ("0", "2", "2", "0"),
        }
        assert totals(client, "mpb") == ("14", "7", "7")
        assert unary(client, request("mpb", {"n": 1})) == (False, "INSUFFICIENT_CREDIT", "1", "0", "")
        assert unary(client, call("mpb", 0, 1))[:3] == (False, "INSUFFICIENT_CREDIT", "2")
        assert unary(client, call("mpb", 7, 0)) == (True, "OK", "7", "7", "")
        assert use(client, work("c1", "mpb", {"in": 3, "out": 2}, event_type="call", reservation_id="mp")) == []
        assert rows(client, "mpb") == {
            "in-only": ("3", "7", "0", "0"),
            "any": ("2", "0", "0", "0"),
            "any2": ("2", "0", "0", "0"),
        }
        assert charges(client, "mpb") == ("7", "0")


def test_under_allow_a_hold_of_two_products_holds_only_what_the_restricted_grant_may_pay(server: ServerProcess) -> None:
    """balance.proto reserve, under ALLOW beyond the credit: "the credit there is, what the usage would draw from
    grants; the rest would be overage and holds nothing". One grant `in-only` of 10 for tin only; a call of in=3,
    out=2 costs 3 + 4 = 7: tin's 3 are drawable, tout's 4 are overage: OVERAGE_ALLOWED, 10 available. The hold
    takes 3 (10 - 3 = 7 available after it); the settling event draws 3 and leaves 4 of overage: charges 7,
    overage 4, 7 left."""
    with server.client() as client:
        customer(client, "mpa", block=False)
        grant(client, "mpa", "in-only", "10", products=("tin",))
        assert unary(client, call("mpa", 3, 2)) == (True, "OVERAGE_ALLOWED", "7", "10", "")
        assert unary(client, call("mpa", 3, 2, reservation_id="h")) == (True, "OVERAGE_ALLOWED", "7", "7", "h")
        assert rows(client, "mpa") == {"in-only": ("0", "10", "3", "0")}
        assert totals(client, "mpa") == ("10", "3", "7")
        assert use(client, work("c1", "mpa", {"in": 3, "out": 2}, event_type="call", reservation_id="h")) == []
        assert rows(client, "mpa") == {"in-only": ("3", "7", "0", "0")}
        assert charges(client, "mpa") == ("7", "4")


def keyed(made: balance_pb2.AuthorizeRequest, request_id: str) -> balance_pb2.AuthorizeRequest:
    copy = balance_pb2.AuthorizeRequest()
    copy.CopyFrom(made)
    copy.request_id = request_id
    return copy


def full(answer: balance_pb2.AuthorizeResponse) -> tuple[bool, str, str, str, str, str]:
    """The answer without its request_id, the instant a NO_ACTIVE_CONTRACT message quotes left out."""
    message = answer.message.split(" (")[0] if answer.reason == "NO_ACTIVE_CONTRACT" else answer.message
    return (*answer_of(answer), message)


def test_authorize_stream_and_batches_answer_each_request_as_authorize_does(server: ServerProcess) -> None:
    """balance.proto: AuthorizeStream is "Many Authorize decisions over one stream", AuthorizeBatches the same with
    many a message; UNKNOWN_CUSTOMER and INVALID_REQUEST are in-band there where Authorize answers NOT_FOUND and
    INVALID_ARGUMENT. `pb` (BLOCK) and `pa` (ALLOW) each hold one grant of 5; `pn` has no contract. By hand:
    - pb, 5 units: cost 5 = 5 available, OK; 5.5 units: 0.5 uncovered, INSUFFICIENT_CREDIT; a call of in=1,
      out=1: 1 + 2 = 3, OK; an event type feeding no product: costs 0, OK, every grant's 5 available.
    - pa, 6 units: 1 beyond, OVERAGE_ALLOWED.
    - pn: NO_ACTIVE_CONTRACT, cost 0, 0 available (no grant).
    Each answer (allowed, reason, estimated_cost, credits_available, reservation_id, message) is the same on all
    three calls."""
    with server.client() as client:
        for name, block in (("pb", True), ("pa", False)):
            customer(client, name, block=block)
            grant(client, name, "g", "5")
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="pn", name="pn"))
        cases = {
            "exact": (request("pb", {"n": 5}), (True, "OK", "5", "5", "", "")),
            "beyond": (
                request("pb", {"n": 5.5}),
                (False, "INSUFFICIENT_CREDIT", "5.5", "5", "", "available credit does not cover this usage"),
            ),
            "call": (call("pb", 1, 1), (True, "OK", "3", "5", "", "")),
            "no product": (request("pb", {"n": 1}, event_type="nothing"), (True, "OK", "0", "5", "", "")),
            "overage": (
                request("pa", {"n": 6}),
                (True, "OVERAGE_ALLOWED", "6", "5", "", "beyond available credit: billed as overage"),
            ),
            "no contract": (
                request("pn", {"n": 1}),
                (False, "NO_ACTIVE_CONTRACT", "0", "0", "", "customer 'pn' has no contract covering now"),
            ),
        }
        for name, (made, expected) in cases.items():
            assert full(client.balance.Authorize(made)) == expected, name
        named = [keyed(made, name) for name, (made, _) in cases.items()]
        whole = batched(client, named)  # one message of them all, then one message each
        each = batched(client, *([one] for one in named))
        stream = streamed(client, named)
        expected_all = [expected for made, expected in cases.values()]
        assert [full(a) for a in whole] == expected_all
        assert [full(a) for a in each] == expected_all
        assert [full(a) for a in stream] == expected_all
        # What unary Authorize refuses by status is answered in-band, naming the field alike (the status's message
        # is "<field>: <why>", where the in-band one may name it inside: "values['n'] ...").
        negative = "values['n'] is -1.0: must not be negative"
        refused = {
            "ghost": (request("ghost-pn", {"n": 1}), grpc.StatusCode.NOT_FOUND, "customer 'ghost-pn' does not exist"),
            "negative": (request("pb", {"n": -1}), grpc.StatusCode.INVALID_ARGUMENT, f"values: {negative}"),
            "no event type": (
                request("pb", {"n": 1}, event_type=""),
                grpc.StatusCode.INVALID_ARGUMENT,
                "event_type: is required",
            ),
        }
        in_band = {
            "ghost": ("UNKNOWN_CUSTOMER", "customer 'ghost-pn' does not exist"),
            "negative": ("INVALID_REQUEST", negative),
            "no event type": ("INVALID_REQUEST", "event_type: is required"),
        }
        for name, (made, code, details) in refused.items():
            assert refusal(functools.partial(client.balance.Authorize, made)) == (code, details), name
            one = keyed(made, name)
            for answer in (batched(client, [one])[0], streamed(client, [one])[0]):
                assert (answer.allowed, answer.reason, answer.message) == (False, *in_band[name]), name
        assert totals(client, "pb") == ("5", "0", "5")  # nothing above held anything


def test_holds_made_through_each_authorize_call_hold_alike(server: ServerProcess) -> None:
    """balance.proto: AuthorizeBatches' holds are "as Authorize(reserve=true) does", each decided against the holds
    before it, in the same message too. Three twin BLOCK customers with one grant of 5, each sent the same three
    holds, through Authorize (one call each), AuthorizeStream and one AuthorizeBatches message:
    r1 of 3 units: OK, 5 - 3 = 2 left; r2 of 3: 3 > 2, INSUFFICIENT_CREDIT, nothing held (2 available); r3 of 2:
    OK, 2 - 2 = 0 left. Every twin then holds 5 (3 + 2), 0 available."""
    holds = [("r1", 3.0), ("r2", 3.0), ("r3", 2.0)]
    expected = [
        (True, "OK", "3", "2", "r1", ""),
        (False, "INSUFFICIENT_CREDIT", "3", "2", "", "available credit does not cover this usage"),
        (True, "OK", "2", "0", "r3", ""),
    ]
    with server.client() as client:
        for name in ("hu", "hs", "hb"):
            customer(client, name, block=True)
            grant(client, name, "g", "5")

        def made(customer_id: str) -> list[balance_pb2.AuthorizeRequest]:
            return [request(customer_id, {"n": n}, reservation_id=r, request_id=r) for r, n in holds]

        assert [full(client.balance.Authorize(m)) for m in made("hu")] == expected
        assert [full(a) for a in streamed(client, made("hs"))] == expected
        assert [full(a) for a in batched(client, made("hb"))] == expected
        for name in ("hu", "hs", "hb"):
            assert totals(client, name) == ("5", "5", "0"), name
            assert rows(client, name) == {"g": ("0", "5", "5", "0")}, name


def alert_rule(client: TariffClient, customer_id: str, kind: alerts_pb2.AlertType, threshold: str = "") -> None:
    client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id=customer_id, type=kind, threshold=threshold))


Fired = tuple[int, str, dict[str, str]]


def alerts_of(client: TariffClient, customer_id: str, marker_id: str) -> list[Fired]:
    """Every alert of `customer_id` committed so far, as (seq, type, details): read from seq 0 up to the alert of a
    new marker customer (`marker_id`, SPEND_THRESHOLD 0.5 on one unit), which commits after all of them."""
    customer(client, marker_id, block=False)
    alert_rule(client, marker_id, alerts_pb2.SPEND_THRESHOLD, "0.5")
    use(client, work(f"{marker_id}-1", marker_id, {"n": 1}))
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S)
    seen: list[Fired] = []
    for alert in stream:
        if alert.customer_id == marker_id:
            stream.cancel()
            return seen
        if alert.customer_id == customer_id:
            seen.append((alert.seq, alerts_pb2.AlertType.Name(alert.type), dict(alert.details)))
    raise AssertionError(f"the stream ended before {marker_id}'s alert: {seen}")


def test_many_holds_on_one_grant_settle_release_and_expire_each_its_own_through_kill_9(
    server: ServerProcess,
) -> None:
    """README "Credits and the gateway": BLOCK holds "can never exceed the credit there was", each decided against
    the holds before it in one message; settling, releasing and TTL each end one hold; holds are journaled, so a
    kill -9 keeps them, and "a hold due while the server was down expires when it serves again". One grant of 10.
    - One message of twelve 1-unit holds h01..h12 (h09 and h10 with a 1.5 s TTL): h01..h10 OK, leaving 9, 8, ...,
      0; h11 and h12 INSUFFICIENT_CREDIT at 0. Held 10.
    - Release h03: 1 back (held 9, 1 available). Settle h05 with 0.25 units: its 1 back, 0.25 drawn (held 8,
      remaining 9.75, available 1.75). Settle h07 with 1.75 units: its 1 back, 1.75 drawn (held 7, remaining 8,
      drawn 2, available 1).
    - kill -9, wait past h09's and h10's TTL, restart: both expire (held 5, available 3), RESERVATION_EXPIRED
      fires once each, released 1.
    - h11 again (its id was never taken): OK, 2 available. h01 again, identical: the same hold, nothing more held
      (2 available); h09 again: allowed, "already expired", nothing held.
    - kill -9 and restart: the same balance, and still exactly those two alerts.
    - Releasing the six open holds gives 1 each: 8 remaining, nothing held."""
    ids = [f"h{i:02}" for i in range(1, 13)]
    short = Duration(nanos=500_000_000, seconds=1)
    with server.client() as client:
        customer(client, "many", block=True)
        grant(client, "many", "g", "10")
        alert_rule(client, "many", alerts_pb2.RESERVATION_EXPIRED)
        group = [
            request("many", {"n": 1}, reservation_id=r, request_id=r, ttl=short if r in ("h09", "h10") else None)
            for r in ids
        ]
        made_at = time.monotonic()
        answers = batched(client, group)
        assert [answer_of(a) for a in answers] == [
            *((True, "OK", "1", str(9 - i), ids[i]) for i in range(10)),
            (False, "INSUFFICIENT_CREDIT", "1", "0", ""),
            (False, "INSUFFICIENT_CREDIT", "1", "0", ""),
        ]
        assert rows(client, "many") == {"g": ("0", "10", "10", "0")}
        assert release(client, "many", "h03") == "1"
        assert totals(client, "many") == ("10", "9", "1")
        assert use(client, work("s05", "many", {"n": 0.25}, reservation_id="h05")) == []
        assert totals(client, "many") == ("9.75", "8", "1.75")
        assert use(client, work("s07", "many", {"n": 1.75}, reservation_id="h07")) == []
        assert totals(client, "many") == ("8", "7", "1")
        server.kill9()
        time.sleep(max(0.0, made_at + 2.0 - time.monotonic()))
    server.restart()
    with server.client() as client:
        assert wait_for(lambda: totals(client, "many") == ("8", "5", "3"), 10), totals(client, "many")
        assert rows(client, "many") == {"g": ("2", "8", "5", "0")}
        assert unary(client, request("many", {"n": 1}, reservation_id="h11")) == (True, "OK", "1", "2", "h11")
        retried = client.balance.Authorize(request("many", {"n": 1}, reservation_id="h01"))
        assert answer_of(retried) == (True, "OK", "1", "2", "h01")
        assert retried.message == "already held: this reservation was made by an earlier identical request"
        ended = client.balance.Authorize(request("many", {"n": 1}, reservation_id="h09", ttl=short))
        assert answer_of(ended) == (True, "OK", "1", "2", "h09")
        assert ended.message.startswith("this reservation was already expired at ")
        assert ended.message.endswith("; nothing is held")
        assert totals(client, "many") == ("8", "6", "2")
        fired = alerts_of(client, "many", "many-mark1")
        assert [(kind, d["reservation_id"], d["released"]) for _, kind, d in fired] == [
            ("RESERVATION_EXPIRED", "h09", "1"),
            ("RESERVATION_EXPIRED", "h10", "1"),
        ]
        server.kill9()
    server.restart()
    with server.client() as client:
        assert totals(client, "many") == ("8", "6", "2")
        assert alerts_of(client, "many", "many-mark2") == fired
        for reservation_id in ("h01", "h02", "h04", "h06", "h08", "h11"):
            assert release(client, "many", reservation_id) == "1", reservation_id
        assert rows(client, "many") == {"g": ("2", "8", "0", "0")}
        assert totals(client, "many") == ("8", "0", "8")


def test_balance_rules_fire_at_their_exact_thresholds_once_and_again_only_after_clearing_across_kill_9(
    server: ServerProcess,
) -> None:
    """README "Watching balances and alerts": LOW_BALANCE when credits_available "falls below" the threshold,
    SPEND_THRESHOLD when period_charges "reaches" it, CREDITS_EXHAUSTED at credits_available <= 0; a rule fires "when
    its condition holds and did not at the previous evaluation, and fires again only once an evaluation has found it
    cleared"; alerts are journaled, so a restart "fires none twice". ALLOW, grant g of 10; rules LOW_BALANCE 4,
    SPEND_THRESHOLD 6, CREDITS_EXHAUSTED.
    1. 6 units: charges 6 = 6 reaches it: SPEND_THRESHOLD; available 10 - 6 = 4, not below 4: no LOW_BALANCE.
    2. 0.000000000001 units: available 3.999999999999 < 4: LOW_BALANCE; charges 6.000000000001, fired already.
    3. hold x of 3.999999999999 units: available 0: CREDITS_EXHAUSTED. kill -9, restart.
    4. release x: available 3.999999999999: CREDITS_EXHAUSTED cleared; LOW_BALANCE held since 2: nothing.
    5. hold y of 3.999999999999 units: available 0 again: CREDITS_EXHAUSTED a second time.
    6. grant g2 of 10: available 3.999999999999 + 10 - 3.999999999999 (held) = 10: both cleared. kill -9, restart.
    7. 6 units (g2 pays: g's credit is held): available 4, not below: nothing; charges 12.000000000001: nothing.
    8. 0.5 units: available 3.5 < 4: LOW_BALANCE a second time.
    Five alerts, in that order, with rising seqs, and after another restart the same five with the same seqs."""
    with server.client() as client:
        customer(client, "thr", block=False)
        grant(client, "thr", "g", "10")
        alert_rule(client, "thr", alerts_pb2.LOW_BALANCE, "4")
        alert_rule(client, "thr", alerts_pb2.SPEND_THRESHOLD, "6")
        alert_rule(client, "thr", alerts_pb2.CREDITS_EXHAUSTED)
        use(client, work("t1", "thr", {"n": 6}))
        assert (totals(client, "thr"), charges(client, "thr")) == (("4", "0", "4"), ("6", "0"))
        use(client, work("t2", "thr", {"n": 0.000000000001}))
        assert totals(client, "thr") == ("3.999999999999", "0", "3.999999999999")
        hold = request("thr", {"n": 3.999999999999}, reservation_id="x")
        assert unary(client, hold) == (True, "OK", "3.999999999999", "0", "x")
        server.kill9()
    server.restart()
    with server.client() as client:
        assert release(client, "thr", "x") == "3.999999999999"
        hold = request("thr", {"n": 3.999999999999}, reservation_id="y")
        assert unary(client, hold) == (True, "OK", "3.999999999999", "0", "y")
        grant(client, "thr", "g2", "10")
        assert totals(client, "thr") == ("13.999999999999", "3.999999999999", "10")
        server.kill9()
    server.restart()
    with server.client() as client:
        use(client, work("t3", "thr", {"n": 6}))
        assert totals(client, "thr") == ("7.999999999999", "3.999999999999", "4")
        assert charges(client, "thr") == ("12.000000000001", "0")
        use(client, work("t4", "thr", {"n": 0.5}))
        assert totals(client, "thr") == ("7.499999999999", "3.999999999999", "3.5")
        fired = alerts_of(client, "thr", "thr-mark1")
        start = str(month_start())
        assert [(kind, details) for _, kind, details in fired] == [
            ("SPEND_THRESHOLD", {"period_charges": "6", "threshold": "6", "period_start_ms": start}),
            ("LOW_BALANCE", {"credits_available": "3.999999999999", "threshold": "4"}),
            ("CREDITS_EXHAUSTED", {"credits_available": "0"}),
            ("CREDITS_EXHAUSTED", {"credits_available": "0"}),
            ("LOW_BALANCE", {"credits_available": "3.5", "threshold": "4"}),
        ]
        seqs = [seq for seq, _, _ in fired]
        assert seqs == sorted(set(seqs))
        server.kill9()
    server.restart()
    with server.client() as client:
        assert alerts_of(client, "thr", "thr-mark2") == fired


def rule_with_id(
    client: TariffClient, rule_id: str, customer_id: str, kind: alerts_pb2.AlertType, threshold: str
) -> None:
    made = alerts_pb2.CreateAlertRequest(id=rule_id, customer_id=customer_id, type=kind, threshold=threshold)
    client.alerts.CreateAlert(made)


def test_a_rule_created_past_its_threshold_fires_at_the_next_change_and_balance_rules_need_a_grant(
    server: ServerProcess,
) -> None:
    """README: "Creating a rule fires nothing: a customer already below the threshold gets the alert at its next
    change"; LOW_BALANCE and CREDITS_EXHAUSTED are "for a customer holding at least one grant"; a hold is a change.
    - `late`, ALLOW, grant 5: 4 units (available 1, charges 4), then rules LOW_BALANCE 2, SPEND_THRESHOLD 3,
      CREDITS_EXHAUSTED: nothing fires on creation. A hold of 1 unit (available 1 - 1 = 0) is the next change: all
      three fire (1 < 2 held already, charges 4 >= 3, 0 <= 0), with available 0 and charges 4.
    - `nog`, ALLOW, no grant, rules LOW_BALANCE 2 and CREDITS_EXHAUSTED: 1 unit (0 available, 1 of overage) fires
      nothing. A grant of 1 (available 1 < 2): LOW_BALANCE only. 1 unit more (available 0): CREDITS_EXHAUSTED."""
    with server.client() as client:
        customer(client, "late", block=False)
        grant(client, "late", "g", "5")
        use(client, work("l1", "late", {"n": 4}))
        rule_with_id(client, "late-low", "late", alerts_pb2.LOW_BALANCE, "2")
        rule_with_id(client, "late-spend", "late", alerts_pb2.SPEND_THRESHOLD, "3")
        rule_with_id(client, "late-exhausted", "late", alerts_pb2.CREDITS_EXHAUSTED, "")
        assert alerts_of(client, "late", "late-mark1") == []
        assert unary(client, request("late", {"n": 1}, reservation_id="h")) == (True, "OK", "1", "0", "h")
        fired = alerts_of(client, "late", "late-mark2")
        assert sorted((kind, details) for _, kind, details in fired) == [
            ("CREDITS_EXHAUSTED", {"credits_available": "0"}),
            ("LOW_BALANCE", {"credits_available": "0", "threshold": "2"}),
            ("SPEND_THRESHOLD", {"period_charges": "4", "threshold": "3", "period_start_ms": str(month_start())}),
        ]

        customer(client, "nog", block=False)
        rule_with_id(client, "nog-low", "nog", alerts_pb2.LOW_BALANCE, "2")
        rule_with_id(client, "nog-exhausted", "nog", alerts_pb2.CREDITS_EXHAUSTED, "")
        use(client, work("n1", "nog", {"n": 1}))
        assert charges(client, "nog") == ("1", "1")
        assert alerts_of(client, "nog", "nog-mark1") == []
        grant(client, "nog", "g", "1")
        use(client, work("n2", "nog", {"n": 1}))
        assert [(kind, details) for _, kind, details in alerts_of(client, "nog", "nog-mark2")] == [
            ("LOW_BALANCE", {"credits_available": "1", "threshold": "2"}),
            ("CREDITS_EXHAUSTED", {"credits_available": "0"}),
        ]


def test_a_hold_is_not_spend_and_spend_fires_when_settled_charges_reach_the_threshold_exactly(
    server: ServerProcess,
) -> None:
    """alerts.proto SPEND_THRESHOLD: period_charges >= threshold; README: "a hold is not consumption". ALLOW, grant
    100, rule SPEND_THRESHOLD 10. A hold of 12 units charges nothing (charges 0): no alert. Its settling event of
    9.999999999999 units: charges 9.999999999999 < 10: none. 0.000000000001 units more: charges exactly 10: fires,
    period_charges 10."""
    with server.client() as client:
        customer(client, "sph", block=False)
        grant(client, "sph", "g", "100")
        alert_rule(client, "sph", alerts_pb2.SPEND_THRESHOLD, "10")
        assert unary(client, request("sph", {"n": 12}, reservation_id="h")) == (True, "OK", "12", "88", "h")
        assert charges(client, "sph") == ("0", "0")
        use(client, work("s1", "sph", {"n": 9.999999999999}, reservation_id="h"))
        assert charges(client, "sph") == ("9.999999999999", "0")
        assert alerts_of(client, "sph", "sph-mark1") == []
        use(client, work("s2", "sph", {"n": 0.000000000001}))
        assert [(kind, details["period_charges"]) for _, kind, details in alerts_of(client, "sph", "sph-mark2")] == [
            ("SPEND_THRESHOLD", "10")
        ]


CONFLICT = "reservation_id 'r1' is already used by a different request of this customer; nothing was held"


def test_a_retried_reservation_is_judged_by_its_content_not_its_map_order_and_a_changed_event_type_conflicts(
    server: ServerProcess,
) -> None:
    """README "Ids": "The same id with the same request (event type, dimensions, values, TTL) answers again with the
    same hold ... the same id with a different request is ALREADY_EXISTS"; AuthorizeBatches answers
    RESERVATION_CONFLICT in-band, AuthorizeStream ends with ALREADY_EXISTS. BLOCK, grant 10. Hold r1: a call of
    in=2, out=1 with dimensions a=1, b=2: cost 2 + 2 = 4, 6 left. The same content with its map entries written in
    the other order is the same request, on every call and after a kill -9: the same hold, 6 still available. A
    `work` request with the same dimensions and values (another event type) is a different request: ALREADY_EXISTS
    (RESERVATION_CONFLICT in-band), nothing held."""
    with server.client() as client:
        customer(client, "ord", block=True)
        grant(client, "ord", "g", "10")

        def hold_r1(order: int, event_type: str = "call", request_id: str = "") -> balance_pb2.AuthorizeRequest:
            made = balance_pb2.AuthorizeRequest(
                request_id=request_id, customer_id="ord", event_type=event_type, reserve=True, reservation_id="r1"
            )
            pairs = [(("a", "1"), ("in", 2.0)), (("b", "2"), ("out", 1.0))]
            for (key, value), (name, number) in pairs if order == 0 else reversed(pairs):
                made.dimensions[key] = value
                made.values[name] = number
            return made

        assert unary(client, hold_r1(0)) == (True, "OK", "4", "6", "r1")
        assert unary(client, hold_r1(1)) == (True, "OK", "4", "6", "r1")
        assert [answer_of(a) for a in batched(client, [hold_r1(1, request_id="q1")])] == [(True, "OK", "4", "6", "r1")]
        assert [answer_of(a) for a in streamed(client, [hold_r1(1, request_id="q2")])] == [(True, "OK", "4", "6", "r1")]
        assert totals(client, "ord") == ("10", "4", "6")
        assert refusal(functools.partial(client.balance.Authorize, hold_r1(0, "work"))) == (
            grpc.StatusCode.ALREADY_EXISTS,
            CONFLICT,
        )
        (conflict,) = batched(client, [hold_r1(0, "work", request_id="q3")])
        assert (conflict.allowed, conflict.reason, conflict.message) == (False, "RESERVATION_CONFLICT", CONFLICT)
        assert refusal(lambda: streamed(client, [hold_r1(0, "work", request_id="q4")])) == (
            grpc.StatusCode.ALREADY_EXISTS,
            CONFLICT,
        )
        server.kill9()
    server.restart()
    with server.client() as client:
        assert unary(client, hold_r1(1)) == (True, "OK", "4", "6", "r1")
        assert [answer_of(a) for a in batched(client, [hold_r1(0, request_id="q5")])] == [(True, "OK", "4", "6", "r1")]
        assert refusal(functools.partial(client.balance.Authorize, hold_r1(1, "work"))) == (
            grpc.StatusCode.ALREADY_EXISTS,
            CONFLICT,
        )
        assert totals(client, "ord") == ("10", "4", "6")


def test_watch_balance_sends_nothing_for_a_retried_denied_or_rejected_request(server: ServerProcess) -> None:
    """README: WatchBalance sends the current balance, then the newest one "after every committed change that
    touches the customer", and "one equal to the previous is not sent again"; balance.proto as_of_seq: "a batch that
    accepts nothing does not move it". BLOCK, grant 10. Balances as (remaining, held, available):
    the first (10, 0, 10); hold r1 of 4: (10, 4, 6). Then requests that change nothing: r1 again (the same hold,
    through Authorize and AuthorizeBatches), a hold of 7 (> 6: denied, nothing held), a batch whose one event is
    rejected (a negative value). Then the release of r1: (10, 0, 10). The stream's third balance is that
    release's, not a copy of the second."""
    with server.client() as client:
        customer(client, "wb", block=True)
        grant(client, "wb", "g", "10")
        stream = client.balance.WatchBalance(
            balance_pb2.WatchBalanceRequest(customer_id="wb"), timeout=STREAM_TIMEOUT_S
        )
        balances = iter(stream)

        def shown() -> tuple[str, str, str]:
            balance = next(balances)
            return balance.credits_remaining, balance.credits_held, balance.credits_available

        assert shown() == ("10", "0", "10")
        assert unary(client, request("wb", {"n": 4}, reservation_id="r1")) == (True, "OK", "4", "6", "r1")
        assert shown() == ("10", "4", "6")
        held_seq = client.get_balance("wb").as_of_seq
        assert unary(client, request("wb", {"n": 4}, reservation_id="r1")) == (True, "OK", "4", "6", "r1")
        (batch_retry,) = batched(client, [request("wb", {"n": 4}, reservation_id="r1", request_id="q")])
        assert answer_of(batch_retry) == (True, "OK", "4", "6", "r1")
        assert unary(client, request("wb", {"n": 7}, reservation_id="r2")) == (
            False,
            "INSUFFICIENT_CREDIT",
            "7",
            "6",
            "",
        )
        ack = client.ingest_batch([work("bad", "wb", {"n": -1})])
        assert (ack.accepted, [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected]) == (0, ["INVALID_EVENT"])
        assert client.get_balance("wb").as_of_seq == held_seq
        assert release(client, "wb", "r1") == "4"
        assert shown() == ("10", "0", "10")
        stream.cancel()


def test_a_hold_and_its_settlement_follow_every_burn_order_tie_break(server: ServerProcess) -> None:
    """docs/architecture.md §3: burn order is "by priority (lower first), then earliest expiry, then the narrowest
    product list, then creation order"; a hold takes credit in burn order and the settling event gives it back
    before it draws in burn order again. BLOCK; 2 credits each, created in this order: z-all (priority 0, every
    product), a-all (0, every product), two (0, units and tin), one (0, units), soon (0, every product, expiring in
    400 days), neg (-1, every product, expiring in 500 days). For `units`: neg, soon, one, two, z-all, a-all (a-all
    after z-all although its id sorts first). 12 available.
    - Hold u of 7 units: neg 2, soon 2, one 2, two 1; 12 - 7 = 5 left.
    - Hold c, a call of in=2 (tin, 2 credits; `one` does not pay tin): two's last 1, then z-all 1; 3 left.
    - Settle u with 9 units: u's 7 come back, then 9 are drawn: neg 2, soon 2, one 2, two 1 (its other 1 is c's),
      z-all 1 (its other 1 is c's), a-all 1: 12 - 9 - 2 held = 1 left (a-all's).
    - Release c: 2 back, two 1 and z-all 1: 3 available."""
    far = now_ms() + 400 * 24 * 3_600_000
    with server.client() as client:
        customer(client, "bo", block=True)
        grant(client, "bo", "z-all", "2")
        grant(client, "bo", "a-all", "2")
        grant(client, "bo", "two", "2", products=("units", "tin"))
        grant(client, "bo", "one", "2", products=("units",))
        grant(client, "bo", "soon", "2", expires_at_ms=far)
        grant(client, "bo", "neg", "2", priority=-1, expires_at_ms=far + 100 * 24 * 3_600_000)
        assert unary(client, request("bo", {"n": 7}, reservation_id="u")) == (True, "OK", "7", "5", "u")
        assert {name: held for name, (_, _, held, _) in rows(client, "bo").items()} == {
            "z-all": "0",
            "a-all": "0",
            "two": "1",
            "one": "2",
            "soon": "2",
            "neg": "2",
        }
        assert unary(client, call("bo", 2, 0, reservation_id="c")) == (True, "OK", "2", "3", "c")
        assert rows(client, "bo")["two"] == ("0", "2", "2", "0")
        assert rows(client, "bo")["z-all"] == ("0", "2", "1", "0")
        assert use(client, work("b1", "bo", {"n": 9}, reservation_id="u")) == []
        assert rows(client, "bo") == {
            "z-all": ("1", "1", "1", "0"),
            "a-all": ("1", "1", "0", "0"),
            "two": ("1", "1", "1", "0"),
            "one": ("2", "0", "0", "0"),
            "soon": ("2", "0", "0", "0"),
            "neg": ("2", "0", "0", "0"),
        }
        assert totals(client, "bo") == ("3", "2", "1")
        assert release(client, "bo", "c") == "2"
        assert totals(client, "bo") == ("3", "0", "3")
        assert charges(client, "bo") == ("9", "0")


def test_holds_across_a_period_end_charge_and_alert_in_the_period_they_end_in(server: ServerProcess) -> None:
    """README: a hold is not consumption; SPEND_THRESHOLD fires "once a period" (a new period clears it); "A new
    billing period begins without a change"; RESERVATION_EXPIRED's details name the period and instant of the
    expiry. ALLOW, a contract whose period ends at E (about 3 s ahead), grant 10 (no expiry, no rollover); rules
    SPEND_THRESHOLD 5 and RESERVATION_EXPIRED.
    - Before E: 5 units: charges 5 reach 5: SPEND_THRESHOLD (period from the contract's start). Hold h1 of 3
      (TTL 60 s) and h2 of 1 (TTL 5 s, ending after E): 10 - 5 - 3 - 1 = 1 available.
    - After E, before anything else: GetBalance shows the period from E, charges 0, the holds still held.
    - The event settling h1 with 6 units: 3 back (4 available, h2 still holding 1), 4 drawn, 2 of overage: the new
      period's charges 6 reach 5: SPEND_THRESHOLD again, period_start_ms E.
    - h2 expires (its 1 back: 1 available): RESERVATION_EXPIRED, released 1, period_start_ms E, at_ms at or after
      its TTL."""
    end_ms = (now_ms() // 1000 + 3) * 1000
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="pe", name="pe"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-pe", customer_id="pe", rate_card_id="card", starting_at=stamp(period_anchor_ms(end_ms))
            )
        )
        grant(client, "pe", "g", "10")
        alert_rule(client, "pe", alerts_pb2.SPEND_THRESHOLD, "5")
        alert_rule(client, "pe", alerts_pb2.RESERVATION_EXPIRED)
        use(client, work("p1", "pe", {"n": 5}))
        assert unary(client, request("pe", {"n": 3}, reservation_id="h1")) == (True, "OK", "3", "2", "h1")
        h2_made_ms = now_ms()
        h2 = request("pe", {"n": 1}, reservation_id="h2", ttl=Duration(seconds=5))
        assert unary(client, h2) == (True, "OK", "1", "1", "h2")
        assert now_ms() < end_ms, "too slow: the period ended before its holds were made"
        assert wait_for(lambda: now_ms() > end_ms + 50, 10)
        balance = client.get_balance("pe")
        assert (balance.period_start.ToMilliseconds(), balance.period_charges) == (end_ms, "0")
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("5", "4", "1")
        assert use(client, work("p2", "pe", {"n": 6}, reservation_id="h1")) == []
        assert charges(client, "pe") == ("6", "2")
        assert totals(client, "pe") == ("1", "1", "0")
        assert wait_for(lambda: totals(client, "pe") == ("1", "0", "1"), 15)
        fired = alerts_of(client, "pe", "pe-mark")
        assert [(kind, {k: v for k, v in details.items() if k != "at_ms"}) for _, kind, details in fired] == [
            (
                "SPEND_THRESHOLD",
                {"period_charges": "5", "threshold": "5", "period_start_ms": str(period_anchor_ms(end_ms))},
            ),
            ("SPEND_THRESHOLD", {"period_charges": "6", "threshold": "5", "period_start_ms": str(end_ms)}),
            ("RESERVATION_EXPIRED", {"reservation_id": "h2", "released": "1", "period_start_ms": str(end_ms)}),
        ]
        assert int(fired[2][2]["at_ms"]) >= h2_made_ms + 5000


def test_credit_back_to_exactly_the_threshold_clears_a_low_balance_rule(server: ServerProcess) -> None:
    """alerts.proto LOW_BALANCE: credits_available < threshold; it fires again "only after an evaluation found it
    cleared", and available equal to the threshold is not below it. CREDITS_EXHAUSTED: available <= 0, so
    0.000000000001 clears it. BLOCK, grant 4; rules LOW_BALANCE 4 (id lo-4), LOW_BALANCE 2 (lo-2),
    CREDITS_EXHAUSTED.
    1. hold a of 1: 3 available: lo-4 (3 < 4). 2. release a: 4, not below 4: lo-4 cleared.
    3. hold b of 3: 1 available: lo-4 again and lo-2 (1 < 2), one change firing both.
    4. hold c of 0.999999999999: 0.000000000001 left: nothing (still below both, above 0).
    5. hold d of 0.000000000001: 0 left: CREDITS_EXHAUSTED. 6. release d: 0.000000000001: cleared.
    7. hold e of 0.000000000001: 0 again: CREDITS_EXHAUSTED again."""
    with server.client() as client:
        customer(client, "clr", block=True)
        grant(client, "clr", "g", "4")
        rule_with_id(client, "lo-4", "clr", alerts_pb2.LOW_BALANCE, "4")
        rule_with_id(client, "lo-2", "clr", alerts_pb2.LOW_BALANCE, "2")
        rule_with_id(client, "ex-0", "clr", alerts_pb2.CREDITS_EXHAUSTED, "")
        assert unary(client, request("clr", {"n": 1}, reservation_id="a"))[3] == "3"
        assert release(client, "clr", "a") == "1"
        assert totals(client, "clr") == ("4", "0", "4")
        assert unary(client, request("clr", {"n": 3}, reservation_id="b"))[3] == "1"
        assert unary(client, request("clr", {"n": 0.999999999999}, reservation_id="c"))[3] == "0.000000000001"
        assert unary(client, request("clr", {"n": 0.000000000001}, reservation_id="d"))[3] == "0"
        assert release(client, "clr", "d") == "0.000000000001"
        assert unary(client, request("clr", {"n": 0.000000000001}, reservation_id="e"))[3] == "0"
        fired = alerts_of(client, "clr", "clr-mark")
        shown = [(kind, details.get("threshold", ""), details["credits_available"]) for _, kind, details in fired]
        assert shown[:1] == [("LOW_BALANCE", "4", "3")]
        assert sorted(shown[1:3]) == [("LOW_BALANCE", "2", "1"), ("LOW_BALANCE", "4", "1")]
        assert shown[3:] == [("CREDITS_EXHAUSTED", "", "0"), ("CREDITS_EXHAUSTED", "", "0")]


def test_a_retried_hold_is_answered_alike_by_every_authorize_call_however_it_ended(server: ServerProcess) -> None:
    """README "Ids": a retry answers "the same hold (decision, estimated_cost, reservation_id; credits_available as
    it is now, and the message ...)", "once the hold has ended, 'this reservation was already settled at ...;
    nothing is held', or released or expired"; AuthorizeBatches' holds are Authorize's. ALLOW, grant 10:
    open o (2 units), settled s (1, settled by 1 unit), released r (1), expired x (1, TTL 0.2 s), overage v
    (20 units: holds the rest of the credit). By hand: after s's event (1 drawn) and v's hold, 10 - 1 = 9
    remaining, o 2 + v 6 held (9 - 2 - 1 = 6 left for v when it was made; r's 1 came back first), 0 available.
    Each retried through Authorize, AuthorizeStream and AuthorizeBatches gets one answer, word for word:
    allowed, its first reason (OK, or OVERAGE_ALLOWED for v), its estimate, 0 available, its id."""
    with server.client() as client:
        customer(client, "rty", block=False)
        grant(client, "rty", "g", "10")
        holds = {
            "o": request("rty", {"n": 2}, reservation_id="o"),
            "s": request("rty", {"n": 1}, reservation_id="s"),
            "r": request("rty", {"n": 1}, reservation_id="r"),
            "x": request("rty", {"n": 1}, reservation_id="x", ttl=Duration(nanos=200_000_000)),
        }
        for made in holds.values():
            assert unary(client, made)[:2] == (True, "OK")
        assert use(client, work("s1", "rty", {"n": 1}, reservation_id="s")) == []
        assert release(client, "rty", "r") == "1"
        assert wait_for(lambda: totals(client, "rty") == ("9", "2", "7"), 10)
        holds["v"] = request("rty", {"n": 20}, reservation_id="v")
        assert unary(client, holds["v"]) == (True, "OVERAGE_ALLOWED", "20", "0", "v")
        assert totals(client, "rty") == ("9", "9", "0")
        for name, made in holds.items():
            first = client.balance.Authorize(made)
            reason, cost = ("OVERAGE_ALLOWED", "20") if name == "v" else ("OK", "2" if name == "o" else "1")
            assert answer_of(first) == (True, reason, cost, "0", name)
            ended = {"s": "settled", "r": "released", "x": "expired"}.get(name)
            if ended is None:
                assert first.message.startswith("already held: this reservation was made by an earlier identical")
            else:
                assert first.message.startswith(f"this reservation was already {ended} at "), first.message
            one = keyed(made, f"q-{name}")
            assert full(batched(client, [one])[0]) == full(first), name
            assert full(streamed(client, [one])[0]) == full(first), name
        assert totals(client, "rty") == ("9", "9", "0")


@pytest.mark.parametrize(
    "extra_args",
    [["--close-grace", "off"], ["--close-grace", "off", "--snapshot-every", "1", "--snapshot-journal-factor", "0"]],
    ids=["journal", "snapshots"],
)
def test_what_rules_fired_and_how_holds_ended_survive_a_kill_9_from_the_journal_or_a_snapshot(
    server_factory: ServerFactory, extra_args: list[str]
) -> None:
    """README: alerts "fire again only once an evaluation has found it cleared", and "a restart (after kill -9 too)
    replays exactly the same alerts with the same numbers and fires none twice"; ended reservations are remembered
    (how they ended, what they asked), so retries get a precise answer. Recovered from the journal alone, then from
    snapshots (one after every record). ALLOW, grant 10; rules LOW_BALANCE 5 and SPEND_THRESHOLD 3.
    Before the crash: 4 units (6 available, charges 4: SPEND_THRESHOLD); hold o of 2 through AuthorizeBatches (4
    available: LOW_BALANCE, in the ReserveBatch record); hold s of 1 settled by 1 unit (3 available, charges 5);
    hold r of 1, released (3 available).
    After kill -9: 1 unit more (2 available, charges 6): both rules still hold, nothing fires. Retries: o is the
    same open hold; s "already settled", r "already released", each allowed with its estimate and 2 available,
    nothing held; s with 2 units is ALREADY_EXISTS; releasing r again answers 1 again, releasing s is
    FAILED_PRECONDITION (settled). A grant of 10 (12 available) clears LOW_BALANCE; hold w of 8 (4 available)
    fires it again, seq 4 (1 and 2 fired before the crash, 3 is the first marker's)."""
    server = server_factory(extra_args=extra_args)
    with server.client() as client:
        catalogue(client)
        customer(client, "sv", block=False)
        grant(client, "sv", "g", "10")
        alert_rule(client, "sv", alerts_pb2.LOW_BALANCE, "5")
        alert_rule(client, "sv", alerts_pb2.SPEND_THRESHOLD, "3")
        use(client, work("v1", "sv", {"n": 4}))
        (held,) = batched(client, [request("sv", {"n": 2}, reservation_id="o", request_id="o")])  # one ReserveBatch
        assert answer_of(held) == (True, "OK", "2", "4", "o")
        assert unary(client, request("sv", {"n": 1}, reservation_id="s")) == (True, "OK", "1", "3", "s")
        assert use(client, work("v2", "sv", {"n": 1}, reservation_id="s")) == []
        assert unary(client, request("sv", {"n": 1}, reservation_id="r")) == (True, "OK", "1", "2", "r")
        assert release(client, "sv", "r") == "1"
        assert totals(client, "sv") == ("5", "2", "3")
        before = alerts_of(client, "sv", "sv-mark1")
        assert [
            (kind, details.get("credits_available", details.get("period_charges"))) for _, kind, details in before
        ] == [
            ("SPEND_THRESHOLD", "4"),
            ("LOW_BALANCE", "4"),
        ]
        assert [seq for seq, _, _ in before] == [1, 2]  # a fresh server's first alerts
        server.kill9()
    server.restart()
    with server.client() as client:
        use(client, work("v3", "sv", {"n": 1}))
        assert (totals(client, "sv"), charges(client, "sv")) == (("4", "2", "2"), ("6", "0"))
        retried = {
            name: client.balance.Authorize(request("sv", {"n": n}, reservation_id=name))
            for name, n in (("o", 2), ("s", 1), ("r", 1))
        }
        assert {name: answer_of(a) for name, a in retried.items()} == {
            "o": (True, "OK", "2", "2", "o"),
            "s": (True, "OK", "1", "2", "s"),
            "r": (True, "OK", "1", "2", "r"),
        }
        assert retried["o"].message == "already held: this reservation was made by an earlier identical request"
        assert retried["s"].message.startswith("this reservation was already settled at ")
        assert retried["r"].message.startswith("this reservation was already released at ")
        conflict = "reservation_id 's' is already used by a different request of this customer; nothing was held"
        assert refusal(lambda: client.balance.Authorize(request("sv", {"n": 2}, reservation_id="s"))) == (
            grpc.StatusCode.ALREADY_EXISTS,
            conflict,
        )
        assert release(client, "sv", "r") == "1"  # again: the same amount, nothing changed
        code, details = refusal(functools.partial(release, client, "sv", "s"))
        assert (code, details.startswith("reservation 's' was already settled at ")) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            True,
        )
        assert totals(client, "sv") == ("4", "2", "2")
        grant(client, "sv", "g2", "10")
        assert unary(client, request("sv", {"n": 8}, reservation_id="w")) == (True, "OK", "8", "4", "w")
        after = alerts_of(client, "sv", "sv-mark2")
        assert after[:2] == before
        assert [(seq, kind, details["credits_available"]) for seq, kind, details in after[2:]] == [
            (4, "LOW_BALANCE", "4")  # seqs 1 and 2 fired before the crash, 3 is sv-mark1's
        ]


def test_one_message_of_holds_is_one_change_for_watchers_and_rules(server: ServerProcess) -> None:
    """README: AuthorizeBatches holds a message's requests "as one journaled command per message", its requests
    without reserve "decided when it arrives, before its holds"; rules are evaluated "after each committed change
    ... from the balance at that change's time", WatchBalance sends the balance after each committed change. BLOCK,
    grant 6; rules LOW_BALANCE 3, CREDITS_EXHAUSTED, RESERVATION_EXPIRED.
    - One message: holds b1 (2 units, TTL 0.4 s), b2 (2), b3 (2), and a plain request of 1 unit: b1 OK 4 left, b2
      OK 2, b3 OK 0; the plain one OK against all 6 (decided before the holds). One change: the watcher's next
      balance is (remaining 6, held 6, available 0), never (6, 2, 4) or (6, 4, 2) in between; LOW_BALANCE and
      CREDITS_EXHAUSTED fire once each, both reading available 0 (not 4 or 2, the message is one change).
    - b1 expires: 2 back: (6, 4, 2); RESERVATION_EXPIRED (b1, released 2); CREDITS_EXHAUSTED cleared, LOW_BALANCE
      still holds (2 < 3).
    - A message holding b4 (2): (6, 6, 0); CREDITS_EXHAUSTED again."""
    with server.client() as client:
        customer(client, "one", block=True)
        grant(client, "one", "g", "6")
        rule_with_id(client, "one-low", "one", alerts_pb2.LOW_BALANCE, "3")
        rule_with_id(client, "one-out", "one", alerts_pb2.CREDITS_EXHAUSTED, "")
        rule_with_id(client, "one-exp", "one", alerts_pb2.RESERVATION_EXPIRED, "")
        stream = client.balance.WatchBalance(
            balance_pb2.WatchBalanceRequest(customer_id="one"), timeout=STREAM_TIMEOUT_S
        )
        balances = iter(stream)

        def shown() -> tuple[str, str, str]:
            balance = next(balances)
            return balance.credits_remaining, balance.credits_held, balance.credits_available

        assert shown() == ("6", "0", "6")
        message = [
            request("one", {"n": 2}, reservation_id="b1", request_id="b1", ttl=Duration(nanos=400_000_000)),
            request("one", {"n": 2}, reservation_id="b2", request_id="b2"),
            request("one", {"n": 2}, reservation_id="b3", request_id="b3"),
            request("one", {"n": 1}, request_id="plain"),
        ]
        assert [answer_of(a) for a in batched(client, message)] == [
            (True, "OK", "2", "4", "b1"),
            (True, "OK", "2", "2", "b2"),
            (True, "OK", "2", "0", "b3"),
            (True, "OK", "1", "6", ""),
        ]
        assert shown() == ("6", "6", "0")
        assert shown() == ("6", "4", "2")  # b1's expiry
        assert [
            answer_of(a) for a in batched(client, [request("one", {"n": 2}, reservation_id="b4", request_id="b4")])
        ] == [(True, "OK", "2", "0", "b4")]
        assert shown() == ("6", "6", "0")
        stream.cancel()
        fired = [(kind, dict(details)) for _, kind, details in alerts_of(client, "one", "one-mark")]
        assert sorted(fired[:2], key=str) == [
            ("CREDITS_EXHAUSTED", {"credits_available": "0"}),
            ("LOW_BALANCE", {"credits_available": "0", "threshold": "3"}),
        ]
        expired = fired[2]
        assert (expired[0], expired[1]["reservation_id"], expired[1]["released"]) == ("RESERVATION_EXPIRED", "b1", "2")
        assert fired[3:] == [("CREDITS_EXHAUSTED", {"credits_available": "0"})]


def test_a_hold_is_given_back_at_its_settling_events_place_in_the_batch(server: ServerProcess) -> None:
    """README "Settling": "the usage event that carries the reservation_id gives the hold back and is then
    charged"; until then "no other request, hold or usage can spend" the held credit. ALLOW, grant 5, hold r of all
    5 (0 available); one batch of two `work` events:
    - ord1: e1 of 5 units (no reservation) first: nothing available, 5 of overage; then e2 of 3 settling r: 5 back,
      3 drawn: 2 left; charges 8, overage 5.
    - ord2: e2 (3, settling r) first: 5 back, 3 drawn, 2 left; then e1 of 5: 2 drawn, 3 of overage: 0 left;
      charges 8, overage 3.
    - ord3 (BLOCK): two events of 2 each naming r: the first settles it (5 back, 2 drawn), the second is rated as
      any event (2 drawn: 1 left) and noticed NOTICE_RESERVATION_ALREADY_SETTLED."""
    with server.client() as client:
        for name, block in (("ord1", False), ("ord2", False), ("ord3", True)):
            customer(client, name, block=block)
            grant(client, name, "g", "5")
            assert unary(client, request(name, {"n": 5}, reservation_id="r")) == (True, "OK", "5", "0", "r")
        assert use(client, work("e1", "ord1", {"n": 5}), work("e2", "ord1", {"n": 3}, reservation_id="r")) == []
        assert (totals(client, "ord1"), charges(client, "ord1")) == (("2", "0", "2"), ("8", "5"))
        assert use(client, work("e2", "ord2", {"n": 3}, reservation_id="r"), work("e1", "ord2", {"n": 5})) == []
        assert (totals(client, "ord2"), charges(client, "ord2")) == (("0", "0", "0"), ("8", "3"))
        settled_twice = use(
            client, work("e1", "ord3", {"n": 2}, reservation_id="r"), work("e2", "ord3", {"n": 2}, reservation_id="r")
        )
        assert settled_twice == [("r", "NOTICE_RESERVATION_ALREADY_SETTLED")]
        assert (totals(client, "ord3"), charges(client, "ord3")) == (("1", "0", "1"), ("4", "0"))


def test_a_hold_leaving_exactly_the_top_up_threshold_buys_nothing_and_a_pico_more_buys(server: ServerProcess) -> None:
    """README "Automatic top-up": "When a rated event or a hold leaves the customer's available credit below
    threshold", one TOP_UP grant of recharge_to - available. BLOCK, grant 10; policy below 4, back to 10, at 1 a
    credit, twice a period. Hold a of 6 units: 10 - 6 = 4 left, not below 4: nothing bought. Hold b of
    0.000000000001: 3.999999999999 < 4: one top-up of 10 - 3.999999999999 = 6.000000000001 credits; b's answer and
    GetBalance count it: 3.999999999999 + 6.000000000001 = 10 available (remaining 16.000000000001, held
    6.000000000001)."""
    with server.client() as client:
        contract_id = customer(client, "tu", block=True)
        grant(client, "tu", "g", "10")
        top_up = contracts_pb2.TopUpPolicy(threshold="4", recharge_to="10", price_per_credit="1", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=top_up))
        assert unary(client, request("tu", {"n": 6}, reservation_id="a")) == (True, "OK", "6", "4", "a")
        assert [g.kind for g in client.get_balance("tu").grants] == [contracts_pb2.PROMOTIONAL]
        assert unary(client, request("tu", {"n": 0.000000000001}, reservation_id="b")) == (
            True,
            "OK",
            "0.000000000001",
            "10",
            "b",
        )
        bought = [g.amount for g in client.get_balance("tu").grants if g.kind == contracts_pb2.TOP_UP]
        assert bought == ["6.000000000001"]
        assert totals(client, "tu") == ("16.000000000001", "6.000000000001", "10")


def test_a_hold_without_a_ttl_lasts_the_servers_maximum_when_that_is_below_60_s(server_factory: ServerFactory) -> None:
    """balance.proto reservation_ttl: "60 s when unset (the server's maximum when that is shorter, so an unset TTL is
    never refused)", and one "beyond the server's maximum (--reservation-ttl-max-s)" is refused; README:
    AuthorizeBatches holds "exactly as Authorize(reserve=true) holds one (same ids, TTL rules ...)". A server started
    with --reservation-ttl-max-s 1: a hold request naming no TTL lasts 1 s, through Authorize, AuthorizeStream and
    AuthorizeBatches alike (the same request as one naming 1 s). Before, AuthorizeBatches refused it (INVALID_REQUEST
    "must be at most 1 s") while Authorize and AuthorizeStream held it 60 s, past the operator's maximum. BLOCK,
    grant 5: holds u, s, b of 1 unit each (4, 3, 2 left); an explicit 2 s is refused on each call. Once 1 s has
    passed, each release finds its hold expired (FAILED_PRECONDITION), and all 5 are available again."""
    server = server_factory(extra_args=["--close-grace", "off", "--reservation-ttl-max-s", "1"])
    with server.client() as client:
        catalogue(client)
        customer(client, "tmax", block=True)
        grant(client, "tmax", "g", "5")
        made_at = time.monotonic()
        assert unary(client, request("tmax", {"n": 1}, reservation_id="u")) == (True, "OK", "1", "4", "u")
        assert [
            answer_of(a) for a in streamed(client, [request("tmax", {"n": 1}, reservation_id="s", request_id="s")])
        ] == [(True, "OK", "1", "3", "s")]
        assert [
            answer_of(a) for a in batched(client, [request("tmax", {"n": 1}, reservation_id="b", request_id="b")])
        ] == [(True, "OK", "1", "2", "b")]
        one_s = Duration(seconds=1)
        again = client.balance.Authorize(request("tmax", {"n": 1}, reservation_id="u", ttl=one_s))
        assert (answer_of(again), again.message) == (
            (True, "OK", "1", "2", "u"),
            "already held: this reservation was made by an earlier identical request",
        )
        assert [
            answer_of(a)
            for a in batched(client, [request("tmax", {"n": 1}, reservation_id="b", request_id="b", ttl=one_s)])
        ] == [(True, "OK", "1", "2", "b")]
        too_long = "reservation_ttl: must be at most 1 s (the server's --reservation-ttl-max-s)"
        two_s = request("tmax", {"n": 1}, reservation_id="t", ttl=Duration(seconds=2), request_id="t")
        assert refusal(functools.partial(client.balance.Authorize, two_s)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            too_long,
        )
        (in_band,) = batched(client, [two_s])
        assert (in_band.reason, in_band.message) == ("INVALID_REQUEST", too_long)
        assert totals(client, "tmax") == ("5", "3", "2")
        time.sleep(max(0.0, made_at + 1.5 - time.monotonic()))
        for reservation_id in ("u", "s", "b"):
            code, details = refusal(functools.partial(release, client, "tmax", reservation_id))
            assert code == grpc.StatusCode.FAILED_PRECONDITION, (reservation_id, details)
            assert details.startswith(f"reservation '{reservation_id}' was already expired"), details
        assert totals(client, "tmax") == ("5", "0", "5")


def test_concurrent_holds_through_every_call_never_overdraw_a_restricted_grant_under_block(
    server: ServerProcess,
) -> None:
    """README: "With a BLOCK contract, holds together can never exceed the credit there was: every reservation goes
    through the one writer and is decided against the holds before it", whichever call made it. Grants: `in-only`
    10 for tin, `any` 6 for every product (same priority, no expiry: in-only, the narrower, pays tin first). A call
    of in=1, out=1 costs 3 and, held, takes in-only 1 and any 2; a `work` unit costs 1, from any only. Three
    threads at once: ten calls by unary Authorize, ten calls by AuthorizeBatches (one a message), ten units by
    AuthorizeStream; none released. Then, by hand: any holds 2 x calls + units <= 6, in-only holds the calls;
    credits_held = 3 x calls + units, the sum of the allowed answers' estimates (under BLOCK a hold holds all it
    costs); every denial is INSUFFICIENT_CREDIT; and as available credit only falls (nothing is released), a
    denied unit means any has 0 left, a denied call that it has less than 2."""
    with server.client() as client:
        customer(client, "race", block=True)
        grant(client, "race", "in-only", "10", products=("tin",))
        grant(client, "race", "any", "6")
    answers: dict[str, list[balance_pb2.AuthorizeResponse]] = {}

    def by_unary() -> None:
        with server.client() as own:
            answers["unary"] = [own.balance.Authorize(call("race", 1, 1, reservation_id=f"a{i}")) for i in range(10)]

    def by_batches() -> None:
        with server.client() as own:
            groups = [[call("race", 1, 1, reservation_id=f"b{i}", request_id=f"b{i}")] for i in range(10)]
            answers["batches"] = batched(own, *groups)

    def by_stream() -> None:
        with server.client() as own:
            units = [request("race", {"n": 1}, reservation_id=f"c{i}", request_id=f"c{i}") for i in range(10)]
            answers["stream"] = streamed(own, units)

    threads = [threading.Thread(target=target) for target in (by_unary, by_batches, by_stream)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STREAM_TIMEOUT_S)
    assert sorted(answers) == ["batches", "stream", "unary"]
    every = [a for path in answers.values() for a in path]
    assert {(a.allowed, a.reason) for a in every} <= {(True, "OK"), (False, "INSUFFICIENT_CREDIT")}
    calls = sum(a.allowed for a in answers["unary"] + answers["batches"])
    units = sum(a.allowed for a in answers["stream"])
    assert 2 * calls + units <= 6
    with server.client() as client:
        grants = rows(client, "race")
        assert grants["in-only"] == ("0", "10", str(calls), "0")
        assert grants["any"] == ("0", "6", str(2 * calls + units), "0")
        held = sum(Decimal(a.estimated_cost) for a in every if a.allowed)
        assert totals(client, "race") == ("16", str(held), str(16 - held))
        assert held == 3 * calls + units
    any_left = 6 - 2 * calls - units
    if units < 10:
        assert any_left == 0
    if calls < 20:
        assert any_left < 2
