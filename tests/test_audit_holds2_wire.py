"""A second acceptance audit of credit holds over the wire (balance.proto: Authorize's reserve, reservation_id and
reservation_ttl, AuthorizeBatches, ReleaseReservation, Balance.credits_held / credits_available; usage.proto:
UsageEvent.reservation_id and IngestAck.notices; README "Credits and the gateway"), as a gateway developer and a
finance user read them, on what tests/test_audit_holds_wire.py and tests/test_audit_gateway2_wire.py leave out: an
event of another customer naming someone's reservation, the same id held by two customers in one message, a hold
that holds nothing (ALLOW, no credit left), a hold settled by an event of another event type or more products, a
settling event dated before the hold, open holds and their retries through kill -9 and a clean stop, and holds
spread over a top-up grant. Every amount is worked out by hand from the docs (arithmetic in each docstring), never
read back from the server; every GetBalance read through rows()/totals() is checked for conservation.

Products (card `card`, credits): `units` (event type `work`, SUM of `n`) at 1 credit a unit; `tin` (event type
`call`, SUM of `in`) at 1 and `tout` (event type `call`, SUM of `out`) at 2, so a `call` with in=a, out=b costs
a + 2b. Contracts from this month's start, overage at 1 USD a credit; grant ids are `<customer>.<name>`."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffError, now_ms
from tariff.v1 import contracts_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal, release, serving
from tests.serverproc import ServerFactory, ServerProcess, wait_for
from tests.test_audit_credits2_wire import charges, customer, grant, rows, totals
from tests.test_audit_credits_wire import period_anchor_ms
from tests.test_audit_gateway2_wire import (
    batched,
    call,
    catalogue,
    request,
    unary,
    use,
    work,
)
from tests.test_audit_topups_wire import month_start_ms, policy, set_policy

HELD = "already held: this reservation was made by an earlier identical request"
HOUR = Duration(seconds=3600)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-holds2")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def test_an_event_of_another_customer_naming_a_hold_is_noticed_and_leaves_the_hold_held(server: ServerProcess) -> None:
    """README "Settling": an event whose reservation_id "is not an open reservation of its customer (never made,
    another customer's, ...)" is rated like any event and noticed NOTICE_RESERVATION_UNKNOWN. ALLOW, ann and bob
    10 credits each. ann holds 4 as `r` (10 - 4 = 6 available). bob's event of 3 naming `r` is bob's usage: bob
    draws 3 (7 left), noticed UNKNOWN; ann's hold is untouched (10 remaining, 4 held, 6 available). Then ann's
    event of exactly 4 naming `r` settles it: 4 given back, 4 drawn, no notice: 6 remaining, 0 held, 6 available;
    charges 4, no overage."""
    with server.client() as client:
        for who in ("ann", "bob"):
            customer(client, who, block=False)
            grant(client, who, "g", "10")
        assert unary(client, request("ann", {"n": 4}, reservation_id="r", ttl=HOUR)) == (True, "OK", "4", "6", "r")
        assert use(client, work("bob-1", "bob", {"n": 3}, reservation_id="r")) == [("r", "NOTICE_RESERVATION_UNKNOWN")]
        assert rows(client, "bob") == {"g": ("3", "7", "0", "0")}
        assert rows(client, "ann") == {"g": ("0", "10", "4", "0")}
        assert totals(client, "ann") == ("10", "4", "6")
        assert use(client, work("ann-1", "ann", {"n": 4}, reservation_id="r")) == []
        assert rows(client, "ann") == {"g": ("4", "6", "0", "0")}
        assert totals(client, "ann") == ("6", "0", "6")
        assert charges(client, "ann") == ("4", "0")
        assert charges(client, "bob") == ("3", "0")


def test_one_id_held_by_two_customers_in_one_message_is_two_holds_each_settled_by_its_own_customer(
    server: ServerProcess,
) -> None:
    """README "Ids": an id is "already used by a different request of this customer", so ids are per customer, and
    AuthorizeBatches holds "exactly as Authorize(reserve=true)". One message: cat holds 2 as `same`, dan holds 3 as
    `same` (different requests, different customers: no conflict). BLOCK, 5 credits each: cat 3 available, dan 2.
    One usage batch: dan's event of 1 naming `same` settles dan's (3 back, 1 drawn: 4 left, 0 held); cat's hold
    stays (5, 2, 3). cat's release gives back 2; dan's release of the settled one is FAILED_PRECONDITION."""
    with server.client() as client:
        for who in ("cat", "dan"):
            customer(client, who, block=True)
            grant(client, who, "g", "5")
        answers = batched(
            client,
            [
                request("cat", {"n": 2}, reservation_id="same", request_id="c", ttl=HOUR),
                request("dan", {"n": 3}, reservation_id="same", request_id="d", ttl=HOUR),
            ],
        )
        assert [(a.allowed, a.reason, a.estimated_cost, a.credits_available, a.reservation_id) for a in answers] == [
            (True, "OK", "2", "3", "same"),
            (True, "OK", "3", "2", "same"),
        ]
        assert totals(client, "cat") == ("5", "2", "3")
        assert totals(client, "dan") == ("5", "3", "2")
        assert use(client, work("dan-1", "dan", {"n": 1}, reservation_id="same")) == []
        assert rows(client, "dan") == {"g": ("1", "4", "0", "0")}
        assert rows(client, "cat") == {"g": ("0", "5", "2", "0")}
        assert release(client, "cat", "same") == "2"
        assert totals(client, "cat") == ("5", "0", "5")
        code, _ = refusal(functools.partial(release, client, "dan", "same"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert totals(client, "dan") == ("4", "0", "4")


def test_a_hold_allowed_as_overage_with_no_credit_left_holds_nothing_and_is_still_a_reservation(
    server: ServerProcess,
) -> None:
    """balance.proto reserve: under ALLOW beyond the credit it holds "the credit there is ... the rest would be
    overage and holds nothing"; AuthorizeResponse.reservation_id is "The hold's id when a reserve request was
    allowed". ALLOW, 2 credits, all used (charges 2, 0 available). A hold of 3 is OVERAGE_ALLOWED, cost 3, 0
    available, id `z`, holding 0 (0 remaining, 0 held). It is an open reservation: its release answers 0 and again
    0; another such hold `z2` is settled by its event of 3 with no notice (all 3 overage): charges 2 + 3 = 5,
    overage 3; a release of `z2` then is FAILED_PRECONDITION (settled)."""
    with server.client() as client:
        customer(client, "eve", block=False)
        grant(client, "eve", "g", "2")
        assert use(client, work("eve-0", "eve", {"n": 2})) == []
        assert totals(client, "eve") == ("0", "0", "0")
        assert unary(client, request("eve", {"n": 3}, reservation_id="z", ttl=HOUR)) == (
            True,
            "OVERAGE_ALLOWED",
            "3",
            "0",
            "z",
        )
        assert totals(client, "eve") == ("0", "0", "0")
        assert release(client, "eve", "z") == "0"
        assert release(client, "eve", "z") == "0"
        assert unary(client, request("eve", {"n": 3}, reservation_id="z2", ttl=HOUR))[:2] == (True, "OVERAGE_ALLOWED")
        assert use(client, work("eve-1", "eve", {"n": 3}, reservation_id="z2")) == []
        assert charges(client, "eve") == ("5", "3")
        assert rows(client, "eve") == {"g": ("2", "0", "0", "0")}
        code, _ = refusal(functools.partial(release, client, "eve", "z2"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_hold_is_settled_by_the_event_naming_it_whatever_its_event_type_and_products(server: ServerProcess) -> None:
    """README "Settling": "the usage event that carries the reservation_id gives the hold back and is then charged
    what it actually costs". ALLOW; grants `u` 5 for `units` only (priority 0) and `any` 4 (priority 1).
    - A `work` hold of 3 (`w`) takes u's 3 (burn order: priority 0 first): 9 remaining, 3 held, 6 available.
    - A `call` event of in=1, out=1 (1 + 2 = 3) naming `w` gives u's 3 back and draws its 3 from `any` (u does
      not pay tin or tout): u (0 drawn, 5 left, 0 held), any (3 drawn, 1 left); 6 remaining, 0 held; no notice.
    - A `call` hold of in=1, out=0 (1) `c` takes any's 1; its settling `call` of in=1, out=2 costs 5: 1 back, then
      tin's 1 from any (0 left) and tout's 4 with no grant left to pay it: 4 overage. Charges 3 + 5 = 8, overage 4;
      u still 5 (it pays units only)."""
    with server.client() as client:
        customer(client, "fay", block=False)
        grant(client, "fay", "u", "5", products=("units",))
        grant(client, "fay", "any", "4", priority=1)
        assert unary(client, request("fay", {"n": 3}, reservation_id="w", ttl=HOUR)) == (True, "OK", "3", "6", "w")
        assert rows(client, "fay") == {"u": ("0", "5", "3", "0"), "any": ("0", "4", "0", "0")}
        assert totals(client, "fay") == ("9", "3", "6")
        assert use(client, work("fay-1", "fay", {"in": 1, "out": 1}, event_type="call", reservation_id="w")) == []
        assert rows(client, "fay") == {"u": ("0", "5", "0", "0"), "any": ("3", "1", "0", "0")}
        assert totals(client, "fay") == ("6", "0", "6")
        assert unary(client, call("fay", 1, 0, reservation_id="c", ttl=HOUR)) == (True, "OK", "1", "0", "c")
        assert rows(client, "fay") == {"u": ("0", "5", "0", "0"), "any": ("3", "1", "1", "0")}
        assert use(client, work("fay-2", "fay", {"in": 1, "out": 2}, event_type="call", reservation_id="c")) == []
        assert rows(client, "fay") == {"u": ("0", "5", "0", "0"), "any": ("4", "0", "0", "0")}
        assert charges(client, "fay") == ("8", "4")


def test_a_settling_event_dated_before_the_hold_settles_it(server: ServerProcess) -> None:
    """An event carrying the reservation_id settles the hold, whenever in the open period it is dated (usage.proto:
    timestamps up to the period's start are taken). BLOCK, 10 credits; a hold of 5 (5 available); the event of 2
    naming it, dated an hour before the hold (this month's start at the earliest): 5 back, 2 drawn: 8 remaining,
    0 held, 8 available; charges 2."""
    with server.client() as client:
        customer(client, "gus", block=True)
        grant(client, "gus", "g", "10")
        assert unary(client, request("gus", {"n": 5}, reservation_id="h", ttl=HOUR)) == (True, "OK", "5", "5", "h")
        early = work("gus-1", "gus", {"n": 2}, reservation_id="h")
        early.timestamp_ms = max(month_start_ms(), now_ms() - 3_600_000)
        assert use(client, early) == []
        assert rows(client, "gus") == {"g": ("2", "8", "0", "0")}
        assert totals(client, "gus") == ("8", "0", "8")
        assert charges(client, "gus") == ("2", "0")


def test_open_holds_and_their_retries_survive_kill_9_and_a_clean_stop(server_factory: ServerFactory) -> None:
    """README: "The hold is journaled before the answer, so a restart (kill -9 included) keeps it"; "Ids": a retry
    answers the same hold and holds nothing more, a changed request is ALREADY_EXISTS. BLOCK, 10 credits; `a` holds
    4 through Authorize, `b` 3 through AuthorizeBatches (TTL 1 h): 10 remaining, 7 held, 3 available.
    After kill -9: the same; `a` retried answers (OK, 4, 3 available, `a`, "already held ...") and holds nothing
    more; `a` with 5 units is ALREADY_EXISTS; a new hold of 4 is denied (3 available). After a clean stop (snapshot):
    the same; `a` released gives 4 (7 available), `b` settled by an event of 2 (3 back, 2 drawn): 8 remaining, 0
    held, 8 available. After kill -9 again: 8, 0, 8; `a` released again answers 4 and changes nothing."""
    server = server_factory(extra_args=["--close-grace", "off"])
    hold_a = request("kim", {"n": 4}, reservation_id="a", ttl=HOUR)
    with server.client() as client:
        catalogue(client)
        customer(client, "kim", block=True)
        grant(client, "kim", "g", "10")
        assert unary(client, hold_a) == (True, "OK", "4", "6", "a")
        (held_b,) = batched(client, [request("kim", {"n": 3}, reservation_id="b", request_id="q", ttl=HOUR)])
        assert (held_b.allowed, held_b.reason, held_b.estimated_cost, held_b.credits_available) == (
            True,
            "OK",
            "3",
            "3",
        )
        assert rows(client, "kim") == {"g": ("0", "10", "7", "0")}
    server.kill9()
    server.restart()
    with server.client() as client:
        assert rows(client, "kim") == {"g": ("0", "10", "7", "0")}
        again = client.balance.Authorize(hold_a)
        assert (again.allowed, again.reason, again.estimated_cost, again.credits_available, again.reservation_id) == (
            True,
            "OK",
            "4",
            "3",
            "a",
        )
        assert again.message == HELD
        changed = request("kim", {"n": 5}, reservation_id="a", ttl=HOUR)
        assert refusal(functools.partial(client.balance.Authorize, changed)) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "reservation_id 'a' is already used by a different request of this customer; nothing was held",
        )
        assert unary(client, request("kim", {"n": 4}, reservation_id="c", ttl=HOUR)) == (
            False,
            "INSUFFICIENT_CREDIT",
            "4",
            "3",
            "",
        )
        assert totals(client, "kim") == ("10", "7", "3")
    assert server.terminate() == 0
    server.restart()
    with server.client() as client:
        assert totals(client, "kim") == ("10", "7", "3")
        assert release(client, "kim", "a") == "4"
        assert totals(client, "kim") == ("10", "3", "7")
        assert use(client, work("kim-1", "kim", {"n": 2}, reservation_id="b")) == []
        assert rows(client, "kim") == {"g": ("2", "8", "0", "0")}
    server.kill9()
    server.restart()
    with server.client() as client:
        assert totals(client, "kim") == ("8", "0", "8")
        assert release(client, "kim", "a") == "4"
        assert totals(client, "kim") == ("8", "0", "8")


def test_holds_spread_over_a_top_up_grant_and_give_back_to_each_grant_what_they_took(
    server_factory: ServerFactory,
) -> None:
    """README "Automatic top-up": "When a rated event or a hold leaves the customer's available credit below
    threshold, the same kernel step buys one TOP_UP grant of recharge_to - available credits" (burning after every
    other grant), at most max_per_period times. ALLOW, grant `g` 10; policy below 5 back to 10 at 1, once a period.
    - Hold `r1` of 8: g holds 8; 10 - 8 = 2 available < 5: buys 10 - 2 = 8 (top-up T). 18 remaining, 8 held, 10
      available.
    - Hold `r2` of 9: g's 2, then T's 7; 1 available < 5, but the cap is reached: nothing bought. 18, 17, 1.
    - Hold `r3` of 3: OVERAGE_ALLOWED, holds T's last 1 (the rest, 2, would be overage): 18, 18, 0.
    - Release `r2` gives 9 back (g 2, T 7): 18, 9, 9.
    - `r1` settled by an event of 12: 8 back, then g's 10 and T's 2 drawn (T's 1 stays held by r3): g (10 drawn,
      0 left), T (2 drawn, 6 left, 1 held); charges 12, no overage; 6 remaining, 1 held, 5 available."""
    server = server_factory(extra_args=["--close-grace", "off"])
    with server.client() as client:
        catalogue(client)
        contract_id = customer(client, "tom", block=False)
        grant(client, "tom", "g", "10")
        set_policy(client, contract_id, policy("5", "10", "1", 1))
        top_up = f"top-up-{month_start_ms()}-1"
        assert unary(client, request("tom", {"n": 8}, reservation_id="r1", ttl=HOUR)) == (True, "OK", "8", "10", "r1")
        assert rows(client, "tom") == {"g": ("0", "10", "8", "0"), top_up: ("0", "8", "0", "0")}
        assert unary(client, request("tom", {"n": 9}, reservation_id="r2", ttl=HOUR)) == (True, "OK", "9", "1", "r2")
        assert rows(client, "tom") == {"g": ("0", "10", "10", "0"), top_up: ("0", "8", "7", "0")}
        assert unary(client, request("tom", {"n": 3}, reservation_id="r3", ttl=HOUR)) == (
            True,
            "OVERAGE_ALLOWED",
            "3",
            "0",
            "r3",
        )
        assert totals(client, "tom") == ("18", "18", "0")
        assert release(client, "tom", "r2") == "9"
        assert rows(client, "tom") == {"g": ("0", "10", "8", "0"), top_up: ("0", "8", "1", "0")}
        assert totals(client, "tom") == ("18", "9", "9")
        assert use(client, work("tom-1", "tom", {"n": 12}, reservation_id="r1")) == []
        assert rows(client, "tom") == {"g": ("10", "0", "0", "0"), top_up: ("2", "6", "1", "0")}
        assert charges(client, "tom") == ("12", "0")
        assert totals(client, "tom") == ("6", "1", "5")


def test_a_hold_request_with_a_malformed_customer_id_names_customer_id_through_every_authorize_call(
    server: ServerProcess,
) -> None:
    """balance.proto AuthorizeResponse.reason: "A customer_id that is empty or breaks the id rule ... is
    INVALID_REQUEST, its message naming customer_id"; AuthorizeBatches holds "as Authorize(reserve=true) does", and
    unary Authorize answers INVALID_ARGUMENT naming that same field. A hold request whose customer_id breaks the id
    rule and that is wrong in another way too (a zero TTL, an id over 256 bytes, no event_type) is refused naming
    customer_id, first, by Authorize, AuthorizeStream and AuthorizeBatches alike; nothing is held."""
    with server.client() as client:
        customer(client, "hal", block=True)
        grant(client, "hal", "g", "5")
        named = "customer_id: 'bad id!' must be 1-128 characters of letters, digits and ._:@-"
        doubly_bad = {
            "zero-ttl": request("bad id!", {"n": 1}, reservation_id="a", ttl=Duration(seconds=0)),
            "long-id": request("bad id!", {"n": 1}, reservation_id="x" * 257),
            "no-event-type": request("bad id!", {"n": 1}, event_type="", reservation_id="a"),
        }
        for name, made in doubly_bad.items():
            made.request_id = name
            assert refusal(functools.partial(client.balance.Authorize, made)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                named,
            ), name
            (streamed_answer,) = list(client.balance.AuthorizeStream(iter([made]), timeout=20))
            assert (streamed_answer.reason, streamed_answer.message) == ("INVALID_REQUEST", named), name
        answers = batched(client, list(doubly_bad.values()))
        assert [(a.allowed, a.reason, a.message, a.reservation_id) for a in answers] == [
            (False, "INVALID_REQUEST", named, "")
        ] * 3
        assert totals(client, "hal") == ("5", "0", "5")


def test_a_hold_across_a_period_end_settles_into_the_new_periods_top_up_allowance(server: ServerProcess) -> None:
    """README "Automatic top-up": a rated event or a hold leaving available credit below threshold buys one TOP_UP
    grant of recharge_to - available (id `top-up-<period start ms>-<n>`, burning after every other grant), "at most
    max_per_period times per billing period"; a hold is not consumption. ALLOW, a contract whose period ends at E
    (about 3 s ahead), grant `g` 10; policy below 5 back to 10 at 1, once a period.
    - Before E: hold h1 of 8 (g holds 8; 2 available < 5: buys 10 - 2 = 8, `top-up-<P1>-1`; 10 available); hold h2
      of 7: g's 2, then T1's 5; 3 available < 5, but the period's one purchase is made: nothing bought. 18
      remaining, 15 held, 3 available.
    - After E: the event of 7 settling h2 gives back g 2 and T1 5, then draws g's 2 and T1's 5 again: 3 available
      (T1's 3) < 5, and the new period allows one purchase: 10 - 3 = 7, `top-up-<E>-1`. 18 remaining, 8 held (h1,
      still on g), 10 available; the new period's charges 7, no overage."""
    end_ms = (now_ms() // 1000 + 3) * 1000
    start_ms = period_anchor_ms(end_ms)
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="pet", name="pet"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-pet", customer_id="pet", rate_card_id="card", starting_at=stamp(start_ms)
            )
        )
        grant(client, "pet", "g", "10")
        set_policy(client, "k-pet", policy("5", "10", "1", 1))
        first, second = f"top-up-{start_ms}-1", f"top-up-{end_ms}-1"
        assert unary(client, request("pet", {"n": 8}, reservation_id="h1", ttl=HOUR)) == (True, "OK", "8", "10", "h1")
        assert unary(client, request("pet", {"n": 7}, reservation_id="h2", ttl=HOUR)) == (True, "OK", "7", "3", "h2")
        assert now_ms() < end_ms, "too slow: the period ended before its holds were made"
        assert rows(client, "pet") == {"g": ("0", "10", "10", "0"), first: ("0", "8", "5", "0")}
        assert totals(client, "pet") == ("18", "15", "3")
        assert wait_for(lambda: now_ms() > end_ms + 50, 10)
        assert use(client, work("pet-1", "pet", {"n": 7}, reservation_id="h2")) == []
        assert rows(client, "pet") == {
            "g": ("2", "8", "8", "0"),
            first: ("5", "3", "0", "0"),
            second: ("0", "7", "0", "0"),
        }
        assert totals(client, "pet") == ("18", "8", "10")
        assert charges(client, "pet") == ("7", "0")


def test_a_hold_due_while_the_server_was_down_expires_when_it_serves_and_says_so_alike_after_restarts(
    server_factory: ServerFactory,
) -> None:
    """README "TTL": "a hold due while the server was down expires when it serves again"; "Ids": once the hold has
    ended a retry answers "this reservation was already ... at ...; nothing is held"; ReleaseReservation of one that
    expired is FAILED_PRECONDITION; an event naming it is rated like any event, noticed NOTICE_RESERVATION_EXPIRED.
    BLOCK, 10 credits; hold `e` of 4 with a TTL of 1 s (6 available), then kill -9 at once; restarted after the
    TTL, the server expires it when it serves: 10 remaining, 0 held, 10 available. Its expiry instant T (when the
    clock recorded it: at or after made + 1 s) is the same in every answer, through a clean stop and a kill -9:
    the retry answers (OK, 4, 10 available, `e`) "... already expired at T; nothing is held", the release
    FAILED_PRECONDITION "reservation 'e' was already expired at T: nothing is held". An event of 3 naming it is
    noticed and draws 3 like any event: 7 remaining."""
    server = server_factory(extra_args=["--close-grace", "off"])
    hold_e = request("ivy", {"n": 4}, reservation_id="e", ttl=Duration(seconds=1))
    with server.client() as client:
        catalogue(client)
        customer(client, "ivy", block=True)
        grant(client, "ivy", "g", "10")
        made_ms = now_ms()
        assert unary(client, hold_e) == (True, "OK", "4", "6", "e")
    server.kill9()
    assert wait_for(lambda: now_ms() > made_ms + 1500, 10)
    server.restart()
    with server.client() as client:
        assert wait_for(lambda: totals(client, "ivy") == ("10", "0", "10"), 10)
        retried = client.balance.Authorize(hold_e)
        prefix, _, rest = retried.message.partition("this reservation was already expired at ")
        expired_at, _, tail = rest.partition(";")
        assert (prefix, tail) == ("", " nothing is held"), retried.message
        assert int(expired_at) >= made_ms + 1000
        answer = (retried.allowed, retried.reason, retried.estimated_cost, retried.credits_available)
        assert (answer, retried.reservation_id) == ((True, "OK", "4", "10"), "e")
    for stop in (server.terminate, server.kill9):
        stop()
        server.restart()
        with server.client() as client:
            assert client.balance.Authorize(hold_e).message == retried.message, stop.__name__
            assert refusal(functools.partial(release, client, "ivy", "e")) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"reservation 'e' was already expired at {expired_at}: nothing is held",
            )
            assert totals(client, "ivy") == ("10", "0", "10")
    with server.client() as client:
        assert use(client, work("ivy-1", "ivy", {"n": 3}, reservation_id="e")) == [("e", "NOTICE_RESERVATION_EXPIRED")]
        assert rows(client, "ivy") == {"g": ("3", "7", "0", "0")}


def test_a_release_racing_the_settling_event_ends_each_hold_exactly_once(server: ServerProcess) -> None:
    """README: every reservation change goes through the one writer; "Settling" and "Releasing": a hold ends once,
    by its event or its release, and the other then learns how it ended (an event naming a released hold is
    NOTICE_RESERVATION_RELEASED and still rated; a release of a settled one is FAILED_PRECONDITION). ALLOW, 100
    credits; 12 holds of 2 units each (24 held, 76 available); for each, its release and its settling event of 1
    unit race from two threads. Each hold ends exactly once: either the release answered 2 and the event was noticed
    RELEASED, or the event settled it (no notice) and the release was FAILED_PRECONDITION. Every event is charged
    its 1 either way: 12 drawn, 88 remaining, 0 held, 88 available."""
    holds = 12
    with server.client() as client:
        customer(client, "rex", block=False)
        grant(client, "rex", "g", "100")
        for i in range(holds):
            assert unary(client, request("rex", {"n": 2}, reservation_id=f"h{i}", ttl=HOUR))[:2] == (True, "OK")
        assert totals(client, "rex") == ("100", "24", "76")

        def released(i: int) -> str:
            try:
                return release(client, "rex", f"h{i}")
            except TariffError as error:
                return str(error.code.name)

        def settled(i: int) -> list[tuple[str, str]]:
            return use(client, work(f"rex-{i}", "rex", {"n": 1}, reservation_id=f"h{i}"))

        with ThreadPoolExecutor(4) as pool:
            releases = [pool.submit(released, i) for i in range(holds)]
            events = [pool.submit(settled, i) for i in range(holds)]
            outcomes = [(r.result(), e.result()) for r, e in zip(releases, events, strict=True)]
        for i, outcome in enumerate(outcomes):
            assert outcome in (("2", [(f"h{i}", "NOTICE_RESERVATION_RELEASED")]), ("FAILED_PRECONDITION", [])), outcome
        assert rows(client, "rex") == {"g": ("12", "88", "0", "0")}
        assert totals(client, "rex") == ("88", "0", "88")
