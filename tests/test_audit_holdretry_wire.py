"""A hold's retries through every form and across restarts, over the wire (README "Credits and the gateway", "Ids":
"The same id with the same request (event type, dimensions, values, TTL: a request naming none is the same as an
earlier one naming none, whatever TTL each is given, so also after a restart with a shorter
`--reservation-ttl-max-s`, and as one naming the TTL it is given now; a request naming a TTL is the same as one
naming none only while the hold that one made is open and was given that TTL) answers again with the same hold
... once the hold has ended, 'this reservation was already settled at ...; nothing is held', or released or
expired"; "the same id with a different request is `ALREADY_EXISTS`", `RESERVATION_CONFLICT` in-band on
AuthorizeBatches, ALREADY_EXISTS ending AuthorizeStream: docs/architecture.md).

Complements tests/test_audit_hold_ttl_wire.py (which restarts once with a shorter maximum and retries through
Authorize and AuthorizeBatches): here each hold is made through one of Authorize, AuthorizeStream and
AuthorizeBatches and retried through all three, naming no TTL and naming 60 s, while open and after it was settled,
released or expired, and across kill -9 replay and snapshots with the maximum lowered and then raised again.

Products from tests/test_audit_gateway2_wire.py: `units` (event type `work`, SUM of `n`) at 1 credit a unit,
`tin`/`tout` (event type `call`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient
from tariff.v1 import balance_pb2

from tests.audit_fixtures import refusal, release, serving
from tests.serverproc import ServerFactory, ServerProcess, wait_for
from tests.test_audit_credits2_wire import customer, grant, totals
from tests.test_audit_gateway2_wire import answer_of, batched, catalogue, request, streamed, use, work

HELD = "already held: this reservation was made by an earlier identical request"
CONFLICT = "reservation_id {!r} is already used by a different request of this customer; nothing was held"
SIXTY_S = Duration(seconds=60)
Full = tuple[bool, str, str, str, str, str]
Form = Callable[[TariffClient, balance_pb2.AuthorizeRequest], balance_pb2.AuthorizeResponse]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-holdretry")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def by_unary(client: TariffClient, made: balance_pb2.AuthorizeRequest) -> balance_pb2.AuthorizeResponse:
    answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(made)
    return answer


def by_stream(client: TariffClient, made: balance_pb2.AuthorizeRequest) -> balance_pb2.AuthorizeResponse:
    keyed = balance_pb2.AuthorizeRequest()
    keyed.CopyFrom(made)
    keyed.request_id = keyed.request_id or "s"
    (answer,) = streamed(client, [keyed])
    return answer


def by_batch(client: TariffClient, made: balance_pb2.AuthorizeRequest) -> balance_pb2.AuthorizeResponse:
    keyed = balance_pb2.AuthorizeRequest()
    keyed.CopyFrom(made)
    keyed.request_id = keyed.request_id or "b"
    (answer,) = batched(client, [keyed])
    return answer


FORMS: dict[str, Form] = {"unary": by_unary, "stream": by_stream, "batch": by_batch}


def full(answer: balance_pb2.AuthorizeResponse) -> Full:
    return (*answer_of(answer), answer.message)


def same_hold(client: TariffClient, made: balance_pb2.AuthorizeRequest, cost: str, available: str, note: str) -> None:
    """`made` retried through each form answers its hold again: allowed, OK, `cost`, `available` now, its id, and
    the message HELD (`note` "held") or starting "this reservation was already <note> at "."""
    for form, call in FORMS.items():
        answer = call(client, made)
        assert answer_of(answer) == (True, "OK", cost, available, made.reservation_id), (form, made)
        if note == "held":
            assert answer.message == HELD, (form, made)
        else:
            prefix = f"this reservation was already {note} at "
            assert answer.message.startswith(prefix), (form, made, answer.message)
            assert answer.message.endswith("; nothing is held"), (form, answer.message)


def conflicts(client: TariffClient, made: balance_pb2.AuthorizeRequest) -> None:
    """`made` is another request than its id's hold: ALREADY_EXISTS ending Authorize and AuthorizeStream
    (docs/architecture.md: "RESERVATION_CONFLICT in-band on `AuthorizeBatches` only"), RESERVATION_CONFLICT
    in-band on AuthorizeBatches, nothing held (the callers check the balance)."""
    expected = CONFLICT.format(made.reservation_id)
    for form in ("unary", "stream"):
        refused = refusal(functools.partial(FORMS[form], client, made))
        assert refused == (grpc.StatusCode.ALREADY_EXISTS, expected), (form, made)
    answer = by_batch(client, made)
    assert full(answer) == (False, "RESERVATION_CONFLICT", "0", "0", "", expected), made


def test_holds_made_through_each_form_are_retried_alike_through_every_form_while_open_and_once_ended(
    server: ServerProcess,
) -> None:
    """BLOCK, 10 credits. Holds a (1 unit, Authorize, no TTL: 60 s), b (2, AuthorizeStream, no TTL), c (3,
    AuthorizeBatches, naming 60 s): 10 - 6 = 4 available, 6 held. While open, each retried through each form naming
    none or naming 60 s is its hold again (a and b named none and were given 60 s; c named 60 s, which none is
    given now): "already held", 4 available. 1 unit more, or event type `call`, or a dimension, is another request.
    Then a is settled by 2 units (its 1 back, 2 drawn: 8 remaining, b 2 + c 3 held, 3 available),
    b released (2 back: 5 available), c released (3 back: 8 available, nothing held). Ended, a retried naming none
    is "already settled", b "already released", c (naming 60 s, or none: none is given 60 s now) "already
    released", each with 8 available; a or b naming 60 s is another request now (an ended hold keeps no TTL)."""
    with server.client() as client:
        customer(client, "hr", block=True)
        grant(client, "hr", "g", "10")
        holds = {
            "a": (request("hr", {"n": 1}, reservation_id="a"), "1", "unary"),
            "b": (request("hr", {"n": 2}, reservation_id="b"), "2", "stream"),
            "c": (request("hr", {"n": 3}, reservation_id="c", ttl=SIXTY_S), "3", "batch"),
        }
        available = 10
        for made, cost, form in holds.values():
            available -= int(cost)
            assert full(FORMS[form](client, made)) == (True, "OK", cost, str(available), made.reservation_id, "")
        assert totals(client, "hr") == ("10", "6", "4")
        for name, (made, cost, _) in holds.items():
            named = request("hr", {"n": float(cost)}, reservation_id=name, ttl=SIXTY_S)
            unnamed = request("hr", {"n": float(cost)}, reservation_id=name)
            for again in (made, named, unnamed):
                same_hold(client, again, cost, "4", "held")
            conflicts(client, request("hr", {"n": float(cost) + 1}, reservation_id=name))
            conflicts(client, request("hr", {"in": float(cost)}, event_type="call", reservation_id=name))
            dimensioned = request("hr", {"n": float(cost)}, reservation_id=name)
            dimensioned.dimensions["region"] = "eu"
            conflicts(client, dimensioned)
        assert totals(client, "hr") == ("10", "6", "4")
        assert use(client, work("hr-1", "hr", {"n": 2}, reservation_id="a")) == []
        assert totals(client, "hr") == ("8", "5", "3")
        assert release(client, "hr", "b") == "2"
        assert release(client, "hr", "c") == "3"
        assert totals(client, "hr") == ("8", "0", "8")
        same_hold(client, request("hr", {"n": 1}, reservation_id="a"), "1", "8", "settled")
        same_hold(client, request("hr", {"n": 2}, reservation_id="b"), "2", "8", "released")
        same_hold(client, request("hr", {"n": 3}, reservation_id="c", ttl=SIXTY_S), "3", "8", "released")
        same_hold(client, request("hr", {"n": 3}, reservation_id="c"), "3", "8", "released")
        conflicts(client, request("hr", {"n": 1}, reservation_id="a", ttl=SIXTY_S))
        conflicts(client, request("hr", {"n": 2}, reservation_id="b", ttl=SIXTY_S))
        assert totals(client, "hr") == ("8", "0", "8")


def test_expired_holds_are_retried_naming_what_their_first_call_named_through_every_form(server: ServerProcess) -> None:
    """BLOCK, 10 credits. Holds x (1 unit, AuthorizeStream, naming 0.3 s) and y (2, AuthorizeBatches, naming
    0.3 s): 7 available, until both expire (10 available, nothing held). Then x and y retried naming 0.3 s are
    "already expired", 10 available, nothing held again; naming none (60 s now) or 60 s is another request."""
    short = Duration(nanos=300_000_000)
    with server.client() as client:
        customer(client, "hx", block=True)
        grant(client, "hx", "g", "10")
        assert answer_of(by_stream(client, request("hx", {"n": 1}, reservation_id="x", ttl=short)))[:3] == (
            True,
            "OK",
            "1",
        )
        assert answer_of(by_batch(client, request("hx", {"n": 2}, reservation_id="y", ttl=short)))[:3] == (
            True,
            "OK",
            "2",
        )
        assert wait_for(lambda: totals(client, "hx") == ("10", "0", "10"), 20)
        for name, cost in (("x", "1"), ("y", "2")):
            same_hold(client, request("hx", {"n": float(cost)}, reservation_id=name, ttl=short), cost, "10", "expired")
            conflicts(client, request("hx", {"n": float(cost)}, reservation_id=name))
            conflicts(client, request("hx", {"n": float(cost)}, reservation_id=name, ttl=SIXTY_S))
        assert totals(client, "hx") == ("10", "0", "10")


def restart(server: ServerProcess, how: str, ttl_max_s: str | None) -> None:
    """Stops the server (kill -9, or a clean stop that writes a snapshot) and starts it with `ttl_max_s` as its
    --reservation-ttl-max-s (None: the default, 3,600)."""
    if how == "stop":
        server.terminate()
    else:
        server.kill9()
    args = list(server.extra_args)
    if "--reservation-ttl-max-s" in args:
        at = args.index("--reservation-ttl-max-s")
        del args[at : at + 2]
    if ttl_max_s is not None:
        args += ["--reservation-ttl-max-s", ttl_max_s]
    server.extra_args = tuple(args)
    server.restart()


@pytest.mark.parametrize(
    ("extra_args", "how"),
    [
        (["--close-grace", "off"], "kill9"),
        (["--close-grace", "off", "--snapshot-every", "1", "--snapshot-journal-factor", "0"], "kill9"),
        (["--close-grace", "off"], "stop"),
    ],
    ids=["journal", "snapshots", "stop-snapshot"],
)
def test_retries_across_restarts_lowering_then_raising_the_ttl_maximum(
    server_factory: ServerFactory, extra_args: list[str], how: str
) -> None:
    """BLOCK, 10 credits. Before: u (1 unit, Authorize, no TTL) settled by 1 unit (9 remaining); s (2,
    AuthorizeStream, no TTL) released; b (3, AuthorizeBatches, no TTL: 60 s) and n (1, AuthorizeStream, naming
    60 s) open: 9 remaining, 4 held, 5 available.
    Restart with --reservation-ttl-max-s 2 (no TTL now gives 2 s): b naming none is "already held" through each
    form; n naming none (2 s now, not its 60 s) is another request, naming 60 s is INVALID_ARGUMENT (over the
    maximum); u "already settled", s "already released"; 5 available. d (1, Authorize, no TTL: 2 s): 4 available,
    retried "already held"; once it expires (5 available) retried naming none through each form "already expired",
    naming 2 s another request; n naming 60 s is INVALID_REQUEST in-band on the streams. e (1, AuthorizeBatches,
    no TTL: 2 s) falls due while the server is down.
    Restart with the default maximum: e retried first, through AuthorizeBatches, is "already expired", 5
    available; then (no TTL gives 60 s again): b and d naming none are as before, b naming 60 s (what it was
    given) is its hold, naming 30 s another request, and n naming none is its hold again (none is given its 60 s
    now): "already held", 4 held, 5 available."""
    server = server_factory(extra_args=extra_args)
    with server.client() as client:
        catalogue(client)
        customer(client, "rs", block=True)
        grant(client, "rs", "g", "10")
        assert full(by_unary(client, request("rs", {"n": 1}, reservation_id="u"))) == (True, "OK", "1", "9", "u", "")
        assert full(by_stream(client, request("rs", {"n": 2}, reservation_id="s"))) == (True, "OK", "2", "7", "s", "")
        assert full(by_batch(client, request("rs", {"n": 3}, reservation_id="b"))) == (True, "OK", "3", "4", "b", "")
        n_first = by_stream(client, request("rs", {"n": 1}, reservation_id="n", ttl=SIXTY_S))
        assert full(n_first) == (True, "OK", "1", "3", "n", "")
        assert use(client, work("rs-1", "rs", {"n": 1}, reservation_id="u")) == []
        assert release(client, "rs", "s") == "2"
        assert totals(client, "rs") == ("9", "4", "5")
    restart(server, how, "2")
    with server.client() as client:
        assert totals(client, "rs") == ("9", "4", "5")
        same_hold(client, request("rs", {"n": 3}, reservation_id="b"), "3", "5", "held")
        conflicts(client, request("rs", {"n": 1}, reservation_id="n"))
        over = request("rs", {"n": 1}, reservation_id="n", ttl=SIXTY_S)
        code, details = refusal(functools.partial(client.balance.Authorize, over))
        assert (code, "reservation_ttl" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details
        same_hold(client, request("rs", {"n": 1}, reservation_id="u"), "1", "5", "settled")
        same_hold(client, request("rs", {"n": 2}, reservation_id="s"), "2", "5", "released")
        assert full(by_unary(client, request("rs", {"n": 1}, reservation_id="d"))) == (True, "OK", "1", "4", "d", "")
        assert wait_for(lambda: totals(client, "rs") == ("9", "4", "5"), 20)  # d expired, 2 s after it was made
        same_hold(client, request("rs", {"n": 1}, reservation_id="d"), "1", "5", "expired")
        conflicts(client, request("rs", {"n": 1}, reservation_id="d", ttl=Duration(seconds=2)))
        assert totals(client, "rs") == ("9", "4", "5")
        for form in ("stream", "batch"):
            answer = FORMS[form](client, over)
            assert (answer.reason, "reservation_ttl" in answer.message) == ("INVALID_REQUEST", True), answer
        e_made = time.monotonic()
        assert full(by_batch(client, request("rs", {"n": 1}, reservation_id="e"))) == (True, "OK", "1", "4", "e", "")
    time.sleep(max(0.0, 2.5 - (time.monotonic() - e_made)))  # e (2 s) falls due while the server is down
    restart(server, how, None)
    with server.client() as client:
        expired = by_batch(client, request("rs", {"n": 1}, reservation_id="e"))
        assert answer_of(expired) == (True, "OK", "1", "5", "e"), expired.message
        assert expired.message.startswith("this reservation was already expired at "), expired.message
        same_hold(client, request("rs", {"n": 1}, reservation_id="e"), "1", "5", "expired")
        assert totals(client, "rs") == ("9", "4", "5")
        same_hold(client, request("rs", {"n": 3}, reservation_id="b"), "3", "5", "held")
        same_hold(client, request("rs", {"n": 1}, reservation_id="n"), "1", "5", "held")
        same_hold(client, request("rs", {"n": 1}, reservation_id="n", ttl=SIXTY_S), "1", "5", "held")
        same_hold(client, request("rs", {"n": 1}, reservation_id="d"), "1", "5", "expired")
        same_hold(client, request("rs", {"n": 1}, reservation_id="u"), "1", "5", "settled")
        same_hold(client, request("rs", {"n": 3}, reservation_id="b", ttl=SIXTY_S), "3", "5", "held")
        conflicts(client, request("rs", {"n": 3}, reservation_id="b", ttl=Duration(seconds=30)))
        assert totals(client, "rs") == ("9", "4", "5")


def test_one_message_holding_an_id_twice_is_one_hold_whichever_of_its_requests_names_the_ttl(
    server: ServerProcess,
) -> None:
    """BLOCK, 10 credits. One AuthorizeBatches message: p (2 units, no TTL: 60 s) then p naming 60 s, q (3, naming
    60 s) then q naming none, then p with 1 unit more: one hold each, the repeats "already held", the changed one
    RESERVATION_CONFLICT; 10 - 2 - 3 = 5 available after the first of each (the answers' credits_available, as it is
    when each is decided: 8, then 5 from q's on). Then one AuthorizeStream of the same first four: each "already
    held", 5 available, 5 held."""
    with server.client() as client:
        customer(client, "hm", block=True)
        grant(client, "hm", "g", "10")
        message = [
            request("hm", {"n": 2}, reservation_id="p", request_id="1"),
            request("hm", {"n": 2}, reservation_id="p", ttl=SIXTY_S, request_id="2"),
            request("hm", {"n": 3}, reservation_id="q", ttl=SIXTY_S, request_id="3"),
            request("hm", {"n": 3}, reservation_id="q", request_id="4"),
            request("hm", {"n": 3}, reservation_id="p", request_id="5"),
        ]
        answers = [full(a) for a in batched(client, message)]
        assert answers == [
            (True, "OK", "2", "8", "p", ""),
            (True, "OK", "2", "8", "p", HELD),
            (True, "OK", "3", "5", "q", ""),
            (True, "OK", "3", "5", "q", HELD),
            (False, "RESERVATION_CONFLICT", "0", "0", "", CONFLICT.format("p")),
        ]
        assert totals(client, "hm") == ("10", "5", "5")
        again = [full(a) for a in streamed(client, message[:4])]
        assert again == [(True, "OK", c, "5", r, HELD) for c, r in (("2", "p"), ("2", "p"), ("3", "q"), ("3", "q"))]
        assert totals(client, "hm") == ("10", "5", "5")


def test_a_hold_given_a_shorter_default_is_retried_naming_that_ttl_after_a_start_with_the_default_maximum(
    server_factory: ServerFactory,
) -> None:
    """Started with --reservation-ttl-max-s 30: f (2 units, AuthorizeStream, no TTL) is given 30 s; 10 - 2 = 8
    available. After kill -9 and a start with the default maximum (no TTL now gives 60 s), f naming none is its
    hold, and so is f naming 30 s (what it was given, while it is open), through each form; f naming 60 s (what no
    TTL gives now, not what f was given) is another request. 8 available, 2 held throughout."""
    server = server_factory(extra_args=["--close-grace", "off", "--reservation-ttl-max-s", "30"])
    thirty_s = Duration(seconds=30)
    with server.client() as client:
        catalogue(client)
        customer(client, "rf", block=True)
        grant(client, "rf", "g", "10")
        assert full(by_stream(client, request("rf", {"n": 2}, reservation_id="f"))) == (True, "OK", "2", "8", "f", "")
        same_hold(client, request("rf", {"n": 2}, reservation_id="f", ttl=thirty_s), "2", "8", "held")
    restart(server, "kill9", None)
    with server.client() as client:
        assert totals(client, "rf") == ("10", "2", "8")
        same_hold(client, request("rf", {"n": 2}, reservation_id="f"), "2", "8", "held")
        same_hold(client, request("rf", {"n": 2}, reservation_id="f", ttl=thirty_s), "2", "8", "held")
        conflicts(client, request("rf", {"n": 2}, reservation_id="f", ttl=SIXTY_S))
        assert totals(client, "rf") == ("10", "2", "8")


def test_a_reservation_id_without_reserve_is_invalid_on_authorize_and_in_band_on_both_streams(
    server: ServerProcess,
) -> None:
    """balance.proto `reservation_id`: "Only read with reserve=true (otherwise INVALID_ARGUMENT; INVALID_REQUEST
    in-band on AuthorizeStream and AuthorizeBatches)": the stream answers it and goes on; nothing is held (10)."""
    message = "reservation_id: is only read with reserve=true"
    with server.client() as client:
        customer(client, "hn", block=True)
        grant(client, "hn", "g", "10")
        made = request("hn", {"n": 1}, reservation_id="z", request_id="1")
        made.reserve = False
        code, details = refusal(functools.partial(client.balance.Authorize, made))
        assert (code, "reservation_id" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details
        after = request("hn", {"n": 1}, request_id="2")
        for answers in (streamed(client, [made, after]), batched(client, [made, after])):
            assert full(answers[0]) == (False, "INVALID_REQUEST", "0", "0", "", message)
            assert answer_of(answers[1]) == (True, "OK", "1", "10", "")
        assert totals(client, "hn") == ("10", "0", "10")
