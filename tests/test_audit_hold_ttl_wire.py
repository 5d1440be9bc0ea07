"""A hold's TTL and its retries across a restart with a shorter `--reservation-ttl-max-s`, over the wire (README
"Credits and the gateway": "`reservation_ttl` defaults to 60 s (to `--reservation-ttl-max-s` when that is shorter: a
request naming no TTL is never refused for one)"; "The same id with the same request (event type, dimensions,
values, TTL) answers again with the same hold"; AuthorizeBatches holds "exactly as `Authorize(reserve=true)` holds
one (same ids, TTL rules ...; a hold made through one is the same hold for the other)").

A request naming no TTL asked for none: its retry, naming none either, is the same request whatever the default
resolves to by then, through Authorize or AuthorizeBatches, after a restart from the journal (kill -9) or from the
snapshot a clean stop writes; a retry naming a TTL other than the one the hold was given is another request. A hold
whose request named its TTL is retried naming that TTL, or naming none where none is given that TTL
(tests/test_audit_holds_wire.py: "A TTL left unset is 60 s: the same request").

Products from tests/test_audit_gateway2_wire.py: `units` (event type `work`, SUM of `n`) at 1 credit a unit.
"""

from __future__ import annotations

import functools

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient

from tests.audit_fixtures import refusal
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_credits2_wire import customer, grant, totals
from tests.test_audit_gateway2_wire import answer_of, batched, catalogue, request, unary

HELD = "already held: this reservation was made by an earlier identical request"
CONFLICT = "reservation_id {!r} is already used by a different request of this customer; nothing was held"
THIRTY_S = Duration(seconds=30)
TWENTY_S = Duration(seconds=20)


def before_the_restart(client: TariffClient) -> None:
    """BLOCK, 10 credits for `tt` and for `tx`. `tt` holds u (2 units, unary, no TTL: 60 s) and b (3 units,
    AuthorizeBatches, no TTL: 60 s): 10 - 2 - 3 = 5 available. `tx` holds x (1 unit, unary, TTL 30 s): 9."""
    catalogue(client)
    for who in ("tt", "tx"):
        customer(client, who, block=True)
        grant(client, who, "g", "10")
    assert unary(client, request("tt", {"n": 2}, reservation_id="u")) == (True, "OK", "2", "8", "u")
    (held,) = batched(client, [request("tt", {"n": 3}, reservation_id="b", request_id="b")])
    assert answer_of(held) == (True, "OK", "3", "5", "b")
    assert unary(client, request("tx", {"n": 1}, reservation_id="x", ttl=THIRTY_S)) == (True, "OK", "1", "9", "x")
    assert totals(client, "tt") == ("10", "5", "5")


@pytest.mark.parametrize("how", ["kill9", "stop"], ids=["journal", "snapshot"])
def test_holds_naming_no_ttl_are_retried_alike_after_a_start_with_a_shorter_ttl_maximum(
    server_factory: ServerFactory, how: str
) -> None:
    """After the restart (journal replay after kill -9, or the snapshot of a clean stop) with
    `--reservation-ttl-max-s 30`, a request naming no TTL resolves to 30 s, yet u and b retried naming none are the
    same requests, each through Authorize and through AuthorizeBatches (a hold made through one is the same hold
    for the other): "already held", their estimates 2 and 3, 5 available, nothing more held. Naming 30 s (what no
    TTL gives now) is another request: ALREADY_EXISTS on Authorize, RESERVATION_CONFLICT in-band, nothing held."""
    server: ServerProcess = server_factory()
    with server.client() as client:
        before_the_restart(client)
    if how == "kill9":
        server.kill9()
    else:
        server.terminate()  # a clean stop writes a snapshot, which the start restores alone
    server.extra_args = (*server.extra_args, "--reservation-ttl-max-s", "30")
    server.restart()
    with server.client() as client:
        for name, n, cost in (("b", 3, "3"), ("u", 2, "2")):
            (through_batch,) = batched(client, [request("tt", {"n": n}, reservation_id=name, request_id=name)])
            assert (answer_of(through_batch), through_batch.message) == ((True, "OK", cost, "5", name), HELD), name
            again = client.balance.Authorize(request("tt", {"n": n}, reservation_id=name))
            assert (answer_of(again), again.message) == ((True, "OK", cost, "5", name), HELD), name
            named = request("tt", {"n": n}, reservation_id=name, ttl=THIRTY_S)
            assert refusal(functools.partial(client.balance.Authorize, named)) == (
                grpc.StatusCode.ALREADY_EXISTS,
                CONFLICT.format(name),
            )
            (conflict,) = batched(client, [request("tt", {"n": n}, reservation_id=name, ttl=THIRTY_S, request_id="c")])
            assert (answer_of(conflict), conflict.message) == (
                (False, "RESERVATION_CONFLICT", "0", "0", ""),
                CONFLICT.format(name),
            )
        assert totals(client, "tt") == ("10", "5", "5")


def test_a_hold_naming_its_ttl_is_retried_with_that_ttl_after_a_start_with_a_shorter_ttl_maximum(
    server_factory: ServerFactory,
) -> None:
    """x named 30 s. After kill -9 and a start with `--reservation-ttl-max-s 30` (no TTL now gives 30 s too), x
    retried naming 30 s, or none, is the same request (allowed, its estimate 1, nothing more held: held or, past its
    30 s, expired, whichever the clock says); naming 20 s is another request: ALREADY_EXISTS on Authorize,
    RESERVATION_CONFLICT in-band."""
    server: ServerProcess = server_factory()
    with server.client() as client:
        before_the_restart(client)
    server.kill9()
    server.extra_args = (*server.extra_args, "--reservation-ttl-max-s", "30")
    server.restart()
    with server.client() as client:
        for ttl in (THIRTY_S, None):
            for again in (
                client.balance.Authorize(request("tx", {"n": 1}, reservation_id="x", ttl=ttl)),
                batched(client, [request("tx", {"n": 1}, reservation_id="x", ttl=ttl, request_id="x")])[0],
            ):
                assert (again.allowed, again.reason, again.estimated_cost, again.reservation_id) == (
                    True,
                    "OK",
                    "1",
                    "x",
                ), ttl
                assert again.message == HELD or again.message.startswith("this reservation was already expired at ")
        asked = request("tx", {"n": 1}, reservation_id="x", ttl=TWENTY_S)
        assert refusal(functools.partial(client.balance.Authorize, asked)) == (
            grpc.StatusCode.ALREADY_EXISTS,
            CONFLICT.format("x"),
        )
        (conflict,) = batched(client, [request("tx", {"n": 1}, reservation_id="x", ttl=TWENTY_S, request_id="c")])
        assert (conflict.reason, conflict.message) == ("RESERVATION_CONFLICT", CONFLICT.format("x"))
        assert totals(client, "tx")[1] in ("1", "0")  # x alone is held, until it expires
