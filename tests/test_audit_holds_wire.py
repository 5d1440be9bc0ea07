"""An acceptance audit of credit holds over the wire (balance.proto: Authorize's reserve, reservation_ttl and
reservation_id, AuthorizeBatches, ReleaseReservation, Balance.credits_held; usage.proto: UsageEvent.reservation_id
and the notices; alerts.proto: RESERVATION_EXPIRED; README "Credits and the gateway"), as a gateway and a finance
user read them: every amount computed by hand from the docs, none read back from the server.

One product, `units` (event type `work`, SUM of `n`), at 1 credit a unit, so holding or using n units is n credits.
One server for the file (started with API keys: `gw-acme` is an ingest key restricted to customer `acme`), each test
on customers of its own."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal, release
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits2_wire import customer as customer_under_contract
from tests.test_audit_credits_wire import period_anchor_ms
from tests.test_audit_topups_wire import catalogue, month_start_ms
from tests.test_server_auth import Keys

KEYS: dict[str, tuple[str, list[str] | None]] = {"admin": ("admin", None), "gw-acme": ("ingest", ["acme"])}
STREAM_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-holds")
    keys = Keys(root / "keys.json", KEYS)
    process = ServerProcess(root / "data", extra_args=keys.args, api_key=keys.key["admin"])
    process.start()
    try:
        with process.client() as client:
            catalogue(client)
        process.keys = keys  # type: ignore[attr-defined]
        yield process
    finally:
        process.stop()


def customer(client: TariffClient, customer_id: str, credits: str, *, block: bool, rate_card_id: str = "card") -> None:
    """The customer, a contract from this month's start (BLOCK or ALLOW, overage at 1 USD a credit) and a PREPAID
    grant `<customer>-g` of `credits`, paid as many USD."""
    customer_under_contract(client, customer_id, block=block, rate_card_id=rate_card_id)
    grant = contracts_pb2.Grant(
        id=f"{customer_id}-g",
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PREPAID,
        amount=credits,
        paid_amount=credits,
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def hold_request(
    customer_id: str, units: float, reservation_id: str = "", ttl: Duration | None = None, **fields: object
) -> balance_pb2.AuthorizeRequest:
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id,
        event_type="work",
        values={"n": units},
        reserve=True,
        reservation_id=reservation_id,
        **fields,  # type: ignore[arg-type]
    )
    if ttl is not None:
        request.reservation_ttl.CopyFrom(ttl)
    return request


def hold(
    client: TariffClient, customer_id: str, units: float, reservation_id: str, ttl: Duration | None = None
) -> balance_pb2.AuthorizeResponse:
    answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(
        hold_request(customer_id, units, reservation_id, ttl)
    )
    return answer


def answer_of(answer: balance_pb2.AuthorizeResponse) -> tuple[bool, str, str, str, str]:
    return answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available, answer.reservation_id


def totals(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    """(credits_remaining, credits_held, credits_available)."""
    b = client.get_balance(customer_id)
    return b.credits_remaining, b.credits_held, b.credits_available


def grant_row(client: TariffClient, customer_id: str) -> tuple[str, str, str, str]:
    """The customer's grant as GetBalance shows it: (drawn, remaining, held, expired)."""
    (grant,) = client.get_balance(customer_id).grants
    return grant.drawn, grant.remaining, grant.held, grant.expired


def use(
    client: TariffClient, customer_id: str, transaction_id: str, units: float, reservation_id: str = ""
) -> usage_pb2.IngestAck:
    event = usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="work",
        timestamp_ms=now_ms(),
        values={"n": units},
        reservation_id=reservation_id,
    )
    ack = client.ingest_batch([event])
    assert ack.accepted == 1, ack
    return ack


def notices(ack: usage_pb2.IngestAck) -> list[tuple[str, str]]:
    return [(n.reservation_id, usage_pb2.NoticeReason.Name(n.reason)) for n in ack.notices]


def batches(client: TariffClient, *groups: list[balance_pb2.AuthorizeRequest]) -> list[balance_pb2.AuthorizeResponse]:
    messages = (balance_pb2.AuthorizeBatch(requests=group) for group in groups)
    results = list(client.balance.AuthorizeBatches(messages, timeout=STREAM_TIMEOUT_S))
    assert [len(r.responses) for r in results] == [len(g) for g in groups]
    return [a for r in results for a in r.responses]


def invoice(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    """The current period's preview: (overage_amount, overage_due, total_due)."""
    preview = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id))
    return preview.overage_amount, preview.overage_due, preview.total_due


CONFLICT = "reservation_id 'r1' is already used by a different request of this customer; nothing was held"


def test_a_retried_hold_answers_the_same_and_holds_once_a_changed_one_is_already_exists(
    server: ServerProcess,
) -> None:
    """balance.proto reservation_id: the same id with the same request answers again and holds once; with a
    different request (values, dimensions, event type or TTL) ALREADY_EXISTS, nothing held; per customer."""
    with server.client() as client:
        customer(client, "ret", "10", block=True)
        customer(client, "ret2", "10", block=True)
        first = hold(client, "ret", 4, "r1", Duration(seconds=60))
        assert answer_of(first) == (True, "OK", "4", "6", "r1")
        again = hold(client, "ret", 4, "r1", Duration(seconds=60))
        assert answer_of(again) == (True, "OK", "4", "6", "r1")
        assert again.message == "already held: this reservation was made by an earlier identical request"
        assert totals(client, "ret") == ("10", "4", "6")
        # A TTL left unset is 60 s: the same request.
        assert answer_of(client.balance.Authorize(hold_request("ret", 4, "r1"))) == (True, "OK", "4", "6", "r1")
        changed = {
            "values": hold_request("ret", 5, "r1", Duration(seconds=60)),
            "ttl": hold_request("ret", 4, "r1", Duration(seconds=30)),
            "dimensions": hold_request("ret", 4, "r1", Duration(seconds=60), dimensions={"region": "eu"}),
        }
        for name, request in changed.items():
            assert refusal(functools.partial(client.balance.Authorize, request)) == (
                grpc.StatusCode.ALREADY_EXISTS,
                CONFLICT,
            ), name
        assert totals(client, "ret") == ("10", "4", "6")
        # Another customer's r1 is a hold of its own.
        assert answer_of(hold(client, "ret2", 7, "r1")) == (True, "OK", "7", "3", "r1")
        assert totals(client, "ret") == ("10", "4", "6")
        # AuthorizeBatches: the same hold again holds nothing more; a changed one is RESERVATION_CONFLICT in-band
        # and does not sink the message.
        same = hold_request("ret", 4, "r1", Duration(seconds=60), request_id="same")
        other = hold_request("ret", 5, "r1", Duration(seconds=60), request_id="other")
        fresh = hold_request("ret", 1, "r2", Duration(seconds=60), request_id="fresh")
        answers = batches(client, [same, other, fresh])
        assert [(a.request_id, *answer_of(a)) for a in answers] == [
            ("same", True, "OK", "4", "6", "r1"),
            ("other", False, "RESERVATION_CONFLICT", "0", "0", ""),
            ("fresh", True, "OK", "1", "5", "r2"),
        ]
        assert totals(client, "ret") == ("10", "5", "5")
        # Once released, a retry answers what happened and holds nothing; a changed request is still refused.
        assert release(client, "ret", "r1") == "4"
        ended = hold(client, "ret", 4, "r1", Duration(seconds=60))
        assert (ended.allowed, ended.estimated_cost, ended.credits_available) == (True, "4", "9")
        assert (
            ended.message.startswith("this reservation was already released at ") and "nothing is held" in ended.message
        )
        assert totals(client, "ret") == ("10", "1", "9")
        assert refusal(lambda: hold(client, "ret", 5, "r1", Duration(seconds=60))) == (
            grpc.StatusCode.ALREADY_EXISTS,
            CONFLICT,
        )


def test_a_retried_overage_hold_answers_overage_allowed_again(server: ServerProcess) -> None:
    """balance.proto: "The same id with the same request answers again": a hold allowed as overage (ALLOW, cost
    beyond the credit) is answered OVERAGE_ALLOWED on its retry too, by Authorize, AuthorizeStream and
    AuthorizeBatches, after a restart, and once it has ended; a gateway retrying after a timeout is never told
    the usage is covered by credit when it was not."""
    note = "allowed beyond available credit: billed as overage"
    with server.client() as client:
        customer(client, "ovr", "10", block=False)
        first = hold(client, "ovr", 15, "r1")
        assert answer_of(first) == (True, "OVERAGE_ALLOWED", "15", "0", "r1")
        assert first.message == "beyond available credit: billed as overage"
        again = hold(client, "ovr", 15, "r1")
        assert answer_of(again) == answer_of(first)
        assert again.message == f"already held: this reservation was made by an earlier identical request; {note}"
        (batched,) = batches(client, [hold_request("ovr", 15, "r1", request_id="q1")])
        assert (batched.request_id, *answer_of(batched)) == ("q1", *answer_of(first))
        streamed = list(client.balance.AuthorizeStream(iter([hold_request("ovr", 15, "r1", request_id="q2")])))
        assert [(a.request_id, *answer_of(a)) for a in streamed] == [("q2", *answer_of(first))]
        assert totals(client, "ovr") == ("10", "10", "0")  # held once
    server.restart()
    with server.client() as client:
        assert answer_of(hold(client, "ovr", 15, "r1")) == answer_of(first)
        assert release(client, "ovr", "r1") == "10"
        ended = hold(client, "ovr", 15, "r1")
        assert answer_of(ended) == (True, "OVERAGE_ALLOWED", "15", "10", "r1")
        assert ended.message.startswith("this reservation was already released at ")
        assert ended.message.endswith(f"; nothing is held; {note}")
        assert totals(client, "ovr") == ("10", "0", "10")
        # A hold the credit covers still answers OK on its retry.
        assert answer_of(hold(client, "ovr", 4, "r2")) == (True, "OK", "4", "6", "r2")
        ok_again = hold(client, "ovr", 4, "r2")
        assert answer_of(ok_again) == (True, "OK", "4", "6", "r2")
        assert ok_again.message == "already held: this reservation was made by an earlier identical request"


def test_a_hold_beyond_the_credit_is_denied_under_block_and_holds_only_the_credit_under_allow(
    server: ServerProcess,
) -> None:
    """Under BLOCK, holds together never exceed the available credit, and a denied hold takes nothing, not even its
    id; under ALLOW the hold is allowed as overage and holds what credit there is (the rest is overage when used)."""
    with server.client() as client:
        customer(client, "blk", "10", block=True)
        denied = hold(client, "blk", 15, "big")
        assert answer_of(denied) == (False, "INSUFFICIENT_CREDIT", "15", "10", "")
        assert totals(client, "blk") == ("10", "0", "10")
        assert answer_of(hold(client, "blk", 6, "big")) == (True, "OK", "6", "4", "big")  # the id was not taken
        assert answer_of(hold(client, "blk", 5, "b2")) == (False, "INSUFFICIENT_CREDIT", "5", "4", "")
        assert answer_of(hold(client, "blk", 4, "b3")) == (True, "OK", "4", "0", "b3")
        assert totals(client, "blk") == ("10", "10", "0")
        plain = client.authorize("blk", "work", values={"n": 0.5})
        assert (plain.allowed, plain.reason, plain.credits_available) == (False, "INSUFFICIENT_CREDIT", "0")

        customer(client, "alw", "10", block=False)
        over = hold(client, "alw", 15, "o1")
        assert answer_of(over) == (True, "OVERAGE_ALLOWED", "15", "0", "o1")
        assert totals(client, "alw") == ("10", "10", "0")
        assert grant_row(client, "alw") == ("0", "10", "10", "0")
        # Settled by the 15 units: the 10 come back, 10 are drawn, 5 are overage.
        assert notices(use(client, "alw", "a1", 15, "o1")) == []
        assert totals(client, "alw") == ("0", "0", "0")
        assert grant_row(client, "alw") == ("10", "0", "0", "0")
        assert invoice(client, "alw") == ("5", "5.00", "5.00")


def test_settling_charges_the_actual_cost_less_or_more_than_held_and_only_once(server: ServerProcess) -> None:
    """usage.proto / README "Settling": the event naming the hold gives it back and is charged what it costs; a hold is
    not consumption, so invoices show none of it; the credits stay conserved in every GetBalance."""
    with server.client() as client:
        customer(client, "st", "10", block=True)
        assert hold(client, "st", 6, "r1").allowed
        assert invoice(client, "st") == ("0", "0.00", "0.00")  # held, not charged
        assert client.get_balance("st").period_charges == "0"
        assert notices(use(client, "st", "s1", 4, "r1")) == []  # costs less: 6 back, 4 drawn
        assert totals(client, "st") == ("6", "0", "6")
        assert grant_row(client, "st") == ("4", "6", "0", "0")
        assert answer_of(hold(client, "st", 5, "r2")) == (True, "OK", "5", "1", "r2")
        assert notices(use(client, "st", "s2", 8, "r2")) == []  # costs more: 5 back, 6 drawn, 2 overage
        balance = client.get_balance("st")
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("0", "0", "0")
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("12", "2", "2")
        assert grant_row(client, "st") == ("10", "0", "0", "0")
        assert invoice(client, "st") == ("2", "2.00", "2.00")
        # A second event naming r2 is rated like any event, and its ack says the hold was already settled.
        assert notices(use(client, "st", "s3", 1, "r2")) == [("r2", "NOTICE_RESERVATION_ALREADY_SETTLED")]
        assert client.get_balance("st").overage_amount == "3"


def test_release_gives_back_once_and_refuses_what_it_cannot_release_precisely(server: ServerProcess) -> None:
    """ReleaseReservation: the credits given back, the same answer again; NOT_FOUND for a reservation the customer
    does not have (worded alike for another customer's), FAILED_PRECONDITION for one settled or expired,
    INVALID_ARGUMENT naming a missing field."""
    with server.client() as client:
        customer(client, "rel", "10", block=True)
        customer(client, "rel2", "10", block=True)
        assert hold(client, "rel", 3.5, "r1").allowed
        assert hold(client, "rel2", 2, "theirs").allowed
        assert release(client, "rel", "r1") == "3.5"
        assert release(client, "rel", "r1") == "3.5"
        assert totals(client, "rel") == ("10", "0", "10")
        never = refusal(lambda: release(client, "rel", "never"))
        foreign = refusal(lambda: release(client, "rel", "theirs"))
        assert never == (grpc.StatusCode.NOT_FOUND, "customer 'rel' has no reservation 'never'")
        assert foreign == (grpc.StatusCode.NOT_FOUND, "customer 'rel' has no reservation 'theirs'")
        assert totals(client, "rel2") == ("10", "2", "8")
        assert hold(client, "rel", 2, "r2").allowed
        use(client, "rel", "u1", 1, "r2")
        code, details = refusal(lambda: release(client, "rel", "r2"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("reservation 'r2' was already settled at ") and details.endswith("nothing is held")
        assert refusal(lambda: release(client, "rel", "")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "reservation_id: is required",
        )
        assert refusal(lambda: release(client, "", "r2")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "customer_id: is required",
        )
        assert refusal(lambda: release(client, "nobody", "r2")) == (
            grpc.StatusCode.NOT_FOUND,
            "customer 'nobody' does not exist",
        )
        assert totals(client, "rel") == ("9", "0", "9")


BAD_TTLS = {
    "zero": (Duration(seconds=0), "reservation_ttl: must be positive"),
    "negative": (Duration(seconds=-1), "reservation_ttl: must be positive"),
    "sub-millisecond": (Duration(nanos=500), "reservation_ttl: must be a whole number of milliseconds"),
    "mixed signs": (
        Duration(seconds=1, nanos=-1_000_000),
        "reservation_ttl: seconds (1) and nanos (-1000000) must not have different signs",
    ),
    "nanos out of range": (
        Duration(nanos=1_000_000_000),
        "reservation_ttl: nanos must be from -999,999,999 to 999,999,999, not 1000000000",
    ),
    "beyond the maximum": (
        Duration(seconds=3600, nanos=1_000_000),
        "reservation_ttl: must be at most 3600 s (the server's --reservation-ttl-max-s)",
    ),
}


def test_bad_ttls_and_ids_are_refused_naming_the_field_and_hold_nothing(server: ServerProcess) -> None:
    """balance.proto reservation_ttl and reservation_id: INVALID_ARGUMENT naming the field on Authorize, INVALID_REQUEST
    in-band (its message naming the field) on AuthorizeBatches; nothing held either way."""
    with server.client() as client:
        customer(client, "ttl", "10", block=True)
        in_band = []
        for name, (ttl, message) in BAD_TTLS.items():
            request = hold_request("ttl", 1, f"r-{name}", ttl, request_id=name)
            assert refusal(functools.partial(client.balance.Authorize, request)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                message,
            ), name
            in_band.append(request)
        at_max = hold_request("ttl", 1, "at-max", Duration(seconds=3600), request_id="at-max")
        answers = batches(client, [*in_band, at_max])
        assert [(a.request_id, a.allowed, a.reason, a.message) for a in answers[:-1]] == [
            (name, False, "INVALID_REQUEST", message) for name, (_, message) in BAD_TTLS.items()
        ]
        assert answer_of(answers[-1]) == (True, "OK", "1", "9", "at-max")
        not_reserving = balance_pb2.AuthorizeRequest(
            customer_id="ttl", event_type="work", values={"n": 1}, reservation_id="r9"
        )
        assert refusal(functools.partial(client.balance.Authorize, not_reserving)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "reservation_id: is only read with reserve=true",
        )
        negative = hold_request("ttl", -1, "neg")
        assert refusal(functools.partial(client.balance.Authorize, negative)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "values: values['n'] is -1.0: must not be negative",
        )
        assert totals(client, "ttl") == ("10", "1", "9")


def alerts_of(client: TariffClient, customer_id: str, count: int) -> list[tuple[str, dict[str, str]]]:
    """The first `count` alerts of the customer (from the start of the log), as (type, details)."""
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S)
    seen: list[tuple[str, dict[str, str]]] = []
    for alert in stream:
        if alert.customer_id == customer_id:
            seen.append((alerts_pb2.AlertType.Name(alert.type), dict(alert.details)))
            if len(seen) == count:
                stream.cancel()
                return seen
    raise AssertionError(f"the stream ended after {seen}")


def test_a_hold_expires_at_its_ttl_gives_the_credit_back_and_alerts(server: ServerProcess) -> None:
    """reservation_ttl: the hold ends at its TTL; the credit comes back; a release after it is FAILED_PRECONDITION and
    a settling event NOTICE_RESERVATION_EXPIRED (charged all the same); RESERVATION_EXPIRED fires with the credits
    given back, and LOW_BALANCE fires on the hold that takes available credit below its threshold, again after the
    expiry cleared it."""
    with server.client() as client:
        customer(client, "exp", "10", block=True)
        for kind, threshold in ((alerts_pb2.LOW_BALANCE, "5"), (alerts_pb2.RESERVATION_EXPIRED, "")):
            client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id="exp", type=kind, threshold=threshold))
        made = time.monotonic()
        assert answer_of(hold(client, "exp", 6, "short", Duration(nanos=300_000_000))) == (
            True,
            "OK",
            "6",
            "4",
            "short",
        )
        assert wait_for(lambda: totals(client, "exp") == ("10", "0", "10"), 10)
        assert time.monotonic() - made >= 0.3 - 0.05
        code, details = refusal(lambda: release(client, "exp", "short"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(
            "reservation 'short' was already expired"
        )
        assert notices(use(client, "exp", "late", 2, "short")) == [("short", "NOTICE_RESERVATION_EXPIRED")]
        assert totals(client, "exp") == ("8", "0", "8")
        assert hold(client, "exp", 4, "again").allowed  # 4 available: LOW_BALANCE again
        fired = alerts_of(client, "exp", 3)
        assert [kind for kind, _ in fired] == ["LOW_BALANCE", "RESERVATION_EXPIRED", "LOW_BALANCE"]
        assert fired[0][1]["credits_available"] == "4" and fired[2][1]["credits_available"] == "4"
        expired = fired[1][1]
        assert (expired["reservation_id"], expired["released"]) == ("short", "6")
        assert expired["period_start_ms"] == str(month_start_ms())


def test_a_restricted_key_touching_anothers_hold_is_denied_and_learns_nothing(server: ServerProcess) -> None:
    """A key restricted to acme: every hold call naming another customer is PERMISSION_DENIED, worded alike whether
    that customer (or its reservation) exists or not, and changes nothing."""
    with server.client() as client:
        customer(client, "acme", "10", block=True)
        customer(client, "victim", "10", block=True)
        assert hold(client, "victim", 3, "v1").allowed
    keys = server.keys  # type: ignore[attr-defined]
    with server.client(api_key=keys.key["gw-acme"]) as gateway:
        answers = []
        for customer_id, reservation_id in (("victim", "v1"), ("victim", "never"), ("ghost", "v1")):
            for call in (
                functools.partial(release, gateway, customer_id, reservation_id),
                functools.partial(hold, gateway, customer_id, 1, reservation_id),
            ):
                code, details = refusal(call)
                assert code == grpc.StatusCode.PERMISSION_DENIED, (customer_id, details)
                answers.append(details.replace(customer_id, "X"))
        assert len(set(answers)) == 1, answers
        code, details = refusal(lambda: batches(gateway, [hold_request("victim", 1, "v1", request_id="a")]))
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        # Its own hold under the victim's id is its own: nothing of the victim's is touched.
        assert answer_of(hold(gateway, "acme", 3, "v1")) == (True, "OK", "3", "7", "v1")
        assert release(gateway, "acme", "v1") == "3"
    with server.client() as client:
        assert totals(client, "victim") == ("10", "3", "7")


def preview_at(client: TariffClient, customer_id: str, at_ms: int) -> tuple[str, str]:
    """The preview of the period holding `at_ms`: (subtotal, overage_amount)."""
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=stamp(at_ms))
    preview = client.invoices.PreviewInvoice(request)
    return preview.subtotal, preview.overage_amount


def test_holds_made_before_a_period_end_are_charged_in_the_period_of_the_settling_event(server: ServerProcess) -> None:
    """A hold is not consumption: a hold made before a period's end and settled after it charges the period its
    event is dated in (a late event dated before the end: the period that ended), never both; the hold itself is in no
    invoice, and the grant (no expiry, no rollover) keeps the credit held across the end."""
    end_ms = now_ms() + 2000
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="pe", name="pe"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-pe",
                customer_id="pe",
                rate_card_id="card",
                starting_at=stamp(period_anchor_ms(end_ms)),
                overage_policy=contracts_pb2.BLOCK,
                overage_price="1",
                currency="USD",
            )
        )
        grant = contracts_pb2.Grant(
            id="pe-g", contract_id="k-pe", kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        before_ms = now_ms()
        assert hold(client, "pe", 4, "r1").allowed and hold(client, "pe", 5, "r2").allowed
        assert now_ms() < end_ms, "the setup outlasted the period: the holds were not made before its end"
        assert totals(client, "pe") == ("10", "9", "1")
        while now_ms() <= end_ms + 50:
            time.sleep(0.05)
        assert totals(client, "pe") == ("10", "9", "1")  # held across the end
        balance = client.get_balance("pe")
        assert balance.period_start.ToMilliseconds() == end_ms
        late = usage_pb2.UsageEvent(
            transaction_id="late", customer_id="pe", event_type="work", timestamp_ms=before_ms, values={"n": 2}
        )
        late.reservation_id = "r1"
        assert client.ingest_batch([late]).accepted == 1
        assert notices(use(client, "pe", "new", 3, "r2")) == []
        assert totals(client, "pe") == ("5", "0", "5")
        assert preview_at(client, "pe", before_ms) == ("2", "0")
        assert preview_at(client, "pe", end_ms) == ("3", "0")
        assert client.get_balance("pe").period_charges == "3"
        # The ended period closes with the late event's 2 and nothing of the holds.
        closing = invoices_pb2.ClosePeriodRequest(customer_id="pe", period_start=stamp(period_anchor_ms(end_ms)))
        final = client.invoices.ClosePeriod(closing)
        assert (final.status, final.subtotal, final.overage_amount, final.total_due) == (
            invoices_pb2.INVOICE_FINAL,
            "2",
            "0",
            "0.00",
        )
        assert [(g.granted, g.drawn, g.remaining) for g in final.grant_balances] == [("10", "2", "8")]


def test_a_reservation_id_is_at_most_256_bytes_as_a_transaction_id_is(server: ServerProcess) -> None:
    """balance.proto reservation_id: at most 256 bytes (as usage.proto's transaction_id and dimensions); a longer one
    is INVALID_ARGUMENT naming reservation_id on Authorize, INVALID_REQUEST in-band on the streams, and holds
    nothing: the server keeps every id for the dedupe window, so an unbounded one would let a caller fill its memory
    and journal with a few requests."""
    longest, too_long = "r" * 256, "r" * 257
    message = "reservation_id: must be at most 256 bytes"
    with server.client() as client:
        customer(client, "long", "10", block=True)
        assert answer_of(hold(client, "long", 1, longest)) == (True, "OK", "1", "9", longest)
        assert refusal(lambda: hold(client, "long", 1, too_long)) == (grpc.StatusCode.INVALID_ARGUMENT, message)
        assert refusal(lambda: hold(client, "long", 1, "é" * 129)) == (grpc.StatusCode.INVALID_ARGUMENT, message)
        (answer,) = batches(client, [hold_request("long", 1, too_long, request_id="b")])
        assert (answer.allowed, answer.reason, answer.message) == (False, "INVALID_REQUEST", message)
        streamed = hold_request("long", 1, too_long, request_id="s")
        (answer,) = client.balance.AuthorizeStream(iter([streamed]), timeout=STREAM_TIMEOUT_S)
        assert (answer.allowed, answer.reason, answer.message) == (False, "INVALID_REQUEST", message)
        assert totals(client, "long") == ("10", "1", "9")


BAD_USAGE = {
    "dimensions": {"dimensions": {"k": "v" * 257}, "values": {"n": 1}},
    "dimensions ": {"dimensions": {f"d{i}": "v" for i in range(65)}, "values": {"n": 1}},
    "values": {"values": {"n": 1, "k" * 257: 1}},
    "values ": {"values": {**{f"v{i}": 1.0 for i in range(64)}, "n": 1}},
}


def test_a_bad_dimension_or_value_is_invalid_argument_naming_that_field_with_or_without_a_hold(
    server: ServerProcess,
) -> None:
    """balance.proto: unary Authorize answers INVALID_REQUEST as INVALID_ARGUMENT "with the field": the
    google.rpc.BadRequest names dimensions or values, not "request"; nothing is held."""
    with server.client() as client:
        customer(client, "dv", "10", block=True)
        for case, fields in BAD_USAGE.items():
            for reserve in (False, True):
                request = balance_pb2.AuthorizeRequest(
                    customer_id="dv",
                    event_type="work",
                    reserve=reserve,
                    **fields,  # type: ignore[arg-type]
                )
                with pytest.raises(TariffError) as failed:
                    client.balance.Authorize(request)
                assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT, (case, reserve)
                named = [v.field for v in failed.value.field_violations]
                assert named == [case.strip()], (case, reserve, failed.value.details)
                assert failed.value.details.startswith(f"{case.strip()}: "), failed.value.details
        assert totals(client, "dv") == ("10", "0", "10")


def test_watch_balance_sends_the_balance_after_each_hold_release_settlement_and_expiry(server: ServerProcess) -> None:
    """WatchBalance: a new balance after every committed change that touches the customer, holds included (a hold,
    through Authorize or AuthorizeBatches, its release, its settlement, its expiry at the TTL)."""
    with server.client() as client:
        customer(client, "wb", "10", block=True)
        stream = client.balance.WatchBalance(
            balance_pb2.WatchBalanceRequest(customer_id="wb"), timeout=STREAM_TIMEOUT_S
        )
        balances = iter(stream)

        def next_balance() -> tuple[str, str, str]:
            b = next(balances)
            return b.credits_remaining, b.credits_held, b.credits_available

        try:
            assert next_balance() == ("10", "0", "10")
            assert hold(client, "wb", 3, "w1").allowed
            assert next_balance() == ("10", "3", "7")
            assert release(client, "wb", "w1") == "3"
            assert next_balance() == ("10", "0", "10")
            (batched,) = batches(client, [hold_request("wb", 2, "w2", request_id="b")])
            assert batched.allowed
            assert next_balance() == ("10", "2", "8")
            use(client, "wb", "w2-use", 1, "w2")
            assert next_balance() == ("9", "0", "9")
            assert hold(client, "wb", 4, "w3", Duration(nanos=200_000_000)).allowed
            assert next_balance() == ("9", "4", "5")
            assert next_balance() == ("9", "0", "9")  # expired at its TTL
        finally:
            stream.cancel()


def test_held_credit_is_spent_by_no_other_usage_and_a_repeated_or_denied_hold_journals_nothing(
    server: ServerProcess,
) -> None:
    """README: held credits are taken out of the grants, so no other request, hold or usage can spend them: usage
    not naming the hold draws what is left and the rest is overage. A hold is journaled before its answer (as_of_seq
    moves once); an identical retry or a denied hold changes nothing and takes no record."""
    with server.client() as client:
        customer(client, "sp", "10", block=True)
        before = client.get_balance("sp").as_of_seq
        assert hold(client, "sp", 6, "h1").allowed
        held_seq = client.get_balance("sp").as_of_seq
        assert held_seq == before + 1
        assert hold(client, "sp", 6, "h1").allowed  # the retry
        assert not hold(client, "sp", 5, "h2").allowed  # denied: 4 available
        assert client.get_balance("sp").as_of_seq == held_seq
        use(client, "sp", "other", 8)  # draws the 4 left, 4 overage; the 6 held stay held
        balance = client.get_balance("sp")
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("6", "6", "0")
        assert (balance.period_charges, balance.overage_amount) == ("8", "4")
        assert grant_row(client, "sp") == ("4", "6", "6", "0")
        assert release(client, "sp", "h1") == "6"
        assert totals(client, "sp") == ("6", "0", "6")


def test_a_release_or_settling_event_right_after_the_ttl_always_finds_the_hold_expired(server: ServerProcess) -> None:
    """balance.proto reserve: a release or settling event applied after the TTL finds the hold expired, whether or not
    the server's clock has looked since (the writer expires it first)."""
    with server.client() as client:
        customer(client, "race", "10", block=True)
        for n in range(3):
            assert hold(client, "race", 1, f"rel{n}", Duration(nanos=100_000_000)).allowed
            assert hold(client, "race", 1, f"use{n}", Duration(nanos=100_000_000)).allowed
            answered_ms = now_ms()  # both holds were made (and their TTLs started) before this
            while now_ms() <= answered_ms + 100:
                time.sleep(0.005)
            code, details = refusal(functools.partial(release, client, "race", f"rel{n}"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION, details
            assert details.startswith(f"reservation 'rel{n}' was already expired at "), details
            ack = use(client, "race", f"late{n}", 1, f"use{n}")
            assert notices(ack) == [(f"use{n}", "NOTICE_RESERVATION_EXPIRED")]
        assert totals(client, "race") == ("7", "0", "7")


def test_a_retroactive_price_rise_draws_on_credit_a_later_hold_took_as_rating_on_time_would(
    server: ServerProcess,
) -> None:
    """4 units used 2 hours ago (4 credits drawn of 10), then a hold of 6; a price rise to 2 from 3 hours ago makes the
    usage cost 8. Rated on time it would have drawn 8 credits and no overage: the hold, taken after it, shrinks to the
    2 credits left (docs/architecture.md §5), so its release gives back 2 and the customer has 2 credits and owes
    nothing."""
    with server.client() as client:
        rerate_world(client, "rr", "rr-card")
        assert totals(client, "rr") == ("6", "6", "0")
        publish_price(client, "rr-card", "2", rise_from_ms())
        assert release(client, "rr", "h") == "2"
        balance = client.get_balance("rr")
        assert (balance.period_charges, balance.overage_amount, balance.credits_available) == ("8", "0", "2")


def rise_from_ms() -> int:
    """The hour a retroactive price rise takes effect: 3 hours ago (this month's start at the earliest)."""
    hour_ms = 3_600_000
    return max(month_start_ms(), (now_ms() - 3 * hour_ms) // hour_ms * hour_ms)


def rerate_world(client: TariffClient, customer_id: str, card: str) -> None:
    """Rate card `card` pricing `units` at 1 from last month; the customer on it (BLOCK, 10 credits) used 4 units
    2 hours ago (after `rise_from_ms`), then holds 6 under `h` (an hour's TTL). Skipped in a month's first hour,
    which has no earlier hour of the month to date that usage in (the hold's own hour counts as after it)."""
    if now_ms() - month_start_ms() < 3_600_000 + 60_000:
        pytest.skip("the month's first hour: no earlier hour of this month for the usage before the hold")
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
    publish_price(client, card, "1", month_start_ms(1))
    customer(client, customer_id, "10", block=True, rate_card_id=card)
    used_ms = max(rise_from_ms() + 60_000, now_ms() - 2 * 3_600_000)
    event = usage_pb2.UsageEvent(
        transaction_id=f"{customer_id}-1",
        customer_id=customer_id,
        event_type="work",
        timestamp_ms=used_ms,
        values={"n": 4},
    )
    assert client.ingest_batch([event]).accepted == 1
    assert hold(client, customer_id, 6, "h", Duration(seconds=3600)).allowed


def test_a_retroactive_price_rise_keeps_usage_after_the_hold_off_the_credit_the_hold_still_holds(
    server: ServerProcess,
) -> None:
    """docs/architecture.md §5: re-rating takes each open hold again at its place in time, so usage before it draws
    first, the hold keeps what is left, and usage after it finds that held, as on time. 4 units 2 hours ago, a hold
    of 6, then 1 unit now (overage: nothing available). A rise to 2 from 3 hours ago: the old usage draws 8, the
    hold keeps 2, the new unit (2) is overage; the release gives back 2."""
    with server.client() as client:
        rerate_world(client, "ra", "ra-card")
        use(client, "ra", "ra-2", 1)
        balance = client.get_balance("ra")
        assert (balance.period_charges, balance.overage_amount) == ("5", "1")
        publish_price(client, "ra-card", "2", rise_from_ms())
        balance = client.get_balance("ra")
        assert (balance.period_charges, balance.overage_amount) == ("10", "2")
        assert totals(client, "ra") == ("2", "2", "0")
        assert grant_row(client, "ra") == ("8", "2", "2", "0")
        assert release(client, "ra", "h") == "2"
        balance = client.get_balance("ra")
        assert (balance.period_charges, balance.overage_amount, balance.credits_available) == ("10", "2", "2")


def test_a_hold_shrunk_by_a_retroactive_price_rise_is_settled_from_what_it_still_holds(server: ServerProcess) -> None:
    """The hold shrunk to 2 by the rise (see above) is settled by an event of 1 unit (2 at the new price): the event
    gives back the 2 held and draws them; nothing is overage, nothing is left."""
    with server.client() as client:
        rerate_world(client, "rs", "rs-card")
        publish_price(client, "rs-card", "2", rise_from_ms())
        assert totals(client, "rs") == ("2", "2", "0")
        assert notices(use(client, "rs", "rs-2", 1, "h")) == []
        balance = client.get_balance("rs")
        assert (balance.period_charges, balance.overage_amount) == ("10", "0")
        assert totals(client, "rs") == ("0", "0", "0")
        assert grant_row(client, "rs") == ("10", "0", "0", "0")


def test_a_hold_shrunk_by_a_retroactive_price_rise_is_shrunk_alike_after_a_restart(tmp_path: Path) -> None:
    """Replay applies the journaled publish as it applied: after kill -9 and a restart the hold still holds 2 and its
    release gives back 2."""
    process = ServerProcess(tmp_path / "data")
    process.start()
    try:
        with process.client() as client:
            catalogue(client)
            rerate_world(client, "rk", "rk-card")
            publish_price(client, "rk-card", "2", rise_from_ms())
            assert totals(client, "rk") == ("2", "2", "0")
        process.kill9()
        process.restart()
        with process.client() as client:
            assert totals(client, "rk") == ("2", "2", "0")
            balance = client.get_balance("rk")
            assert (balance.period_charges, balance.overage_amount) == ("8", "0")
            assert release(client, "rk", "h") == "2"
            assert totals(client, "rk") == ("2", "0", "2")
    finally:
        process.stop()


def publish_price(client: TariffClient, card: str, price: str, from_ms: int) -> None:
    """A new version of `card` pricing `units` at `price`, in force from `from_ms` (an hour)."""
    rates = [pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=price))]
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates)
    )
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=draft.version, effective_from=stamp(from_ms))
    client.pricing.PublishVersion(request)


def test_a_rejected_event_naming_a_hold_settles_nothing(server: ServerProcess) -> None:
    """usage.proto: a rejected event changes nothing, so an event naming a hold that is refused (malformed, too far in
    the future, the id of an accepted event with other content) leaves the hold open and charges nothing."""
    with server.client() as client:
        customer(client, "rj", "10", block=True)
        assert hold(client, "rj", 4, "h").allowed
        use(client, "rj", "taken", 1)
        at_ms = now_ms()
        events = [
            usage_pb2.UsageEvent(transaction_id="neg", timestamp_ms=at_ms, values={"n": -1}),
            usage_pb2.UsageEvent(transaction_id="future", timestamp_ms=at_ms + 3_600_000, values={"n": 1}),
            usage_pb2.UsageEvent(transaction_id="taken", timestamp_ms=at_ms, values={"n": 2}),
        ]
        for event in events:
            event.customer_id, event.event_type, event.reservation_id = "rj", "work", "h"
        ack = client.ingest_batch(events)
        assert (ack.accepted, [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected], list(ack.notices)) == (
            0,
            ["INVALID_EVENT", "TIMESTAMP_OUT_OF_RANGE", "DUPLICATE_CONFLICT"],
            [],
        )
        assert totals(client, "rj") == ("9", "4", "5")
        assert release(client, "rj", "h") == "4"


def test_a_hold_spans_grants_in_burn_order_and_its_settlement_draws_in_burn_order_again(server: ServerProcess) -> None:
    """README: a hold takes credits out of the grants in burn order (per grant: GrantBalance.held); its settling event
    gives every grant its share back before its own charge draws, in burn order again."""
    with server.client() as client:
        customer(client, "sg", "3", block=True)  # sg-g, priority 0: burns first
        extra = contracts_pb2.Grant(
            id="sg-late", contract_id="k-sg", kind=contracts_pb2.PREPAID, amount="10", paid_amount="10", priority=1
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=extra))
        assert answer_of(hold(client, "sg", 5, "h")) == (True, "OK", "5", "8", "h")

        def rows() -> dict[str, tuple[str, str, str]]:
            return {g.grant_id: (g.drawn, g.remaining, g.held) for g in client.get_balance("sg").grants}

        assert rows() == {"sg-g": ("0", "3", "3"), "sg-late": ("0", "10", "2")}
        use(client, "sg", "one", 1, "h")
        assert rows() == {"sg-g": ("1", "2", "0"), "sg-late": ("0", "10", "0")}
        assert totals(client, "sg") == ("12", "0", "12")


def test_a_message_decides_its_plain_requests_before_its_holds_and_its_holds_against_each_other(
    server: ServerProcess,
) -> None:
    """balance.proto AuthorizeBatches: the requests without reserve are decided when the message arrives, before its
    holds; the holds, in request order, each against the holds before it (BLOCK: never more than the credit)."""
    with server.client() as client:
        customer(client, "mb", "10", block=True)
        requests = [
            hold_request("mb", 6, "a", request_id="hold-a"),
            balance_pb2.AuthorizeRequest(request_id="plain", customer_id="mb", event_type="work", values={"n": 8}),
            hold_request("mb", 5, "b", request_id="hold-b"),
            hold_request("mb", 4, "c", request_id="hold-c"),
        ]
        answers = batches(client, requests)
        assert [(a.request_id, *answer_of(a)) for a in answers] == [
            ("hold-a", True, "OK", "6", "4", "a"),
            ("plain", True, "OK", "8", "10", ""),
            ("hold-b", False, "INSUFFICIENT_CREDIT", "5", "4", ""),
            ("hold-c", True, "OK", "4", "0", "c"),
        ]
        assert totals(client, "mb") == ("10", "10", "0")
