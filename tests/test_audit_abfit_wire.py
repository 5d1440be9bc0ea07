"""AuthorizeBatches under a lowered --message-mb-max (balance.proto AuthorizeBatches; README "Limits and
backpressure", `--message-mb-max`): an AuthorizeBatchResult is always sent, or its message is refused whole,
RESOURCE_EXHAUSTED naming the limit and what to do, before any of its holds is placed.

An answer echoes its request's request_id (and a hold's reservation_id) and adds a reason and two amounts, so a
message of 10,000 requests filling its 1 MiB could have an answer over 1 MiB even with every message left out: gRPC
refused to send it ("Sent message larger than max"), the caller got a transport error for a message that was
decided, and the holds it asked for were committed all the same, so a resend held them again under new ids.

One server for the file (`--message-mb-max 1`: 1 MiB messages, read or sent). Catalogue: product `s` (event type
`s`, SUM of `n`, 1 credit a unit) on rate card `card` (pricing unit credits) from 2024-01-01. Each test makes its
own customer: a contract from the hour 5 hours ago (ALLOW) and a PREPAID grant of 1,000,000 credits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, refusal, serving, this_hour_ms, unit
from tests.serverproc import ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MESSAGE_BYTES_MAX = 1024 * 1024  # --message-mb-max 1
STREAM_TIMEOUT_S = 60


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="s", event_type="s", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("s", "1")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-abfit")
    yield from serving(ServerProcess(root / "data", extra_args=["--message-mb-max", "1"]), catalogue)


def funded(client: TariffClient, customer_id: str) -> None:
    open_contract(client, customer_id, f"k-{customer_id}", this_hour_ms() - 5 * HOUR_MS, rate_card_id="card")
    grant = contracts_pb2.Grant(
        id=f"{customer_id}-g",
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PREPAID,
        amount="1000000",
        paid_amount="1000000",
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def batches(
    client: TariffClient, *messages: list[balance_pb2.AuthorizeRequest]
) -> list[balance_pb2.AuthorizeBatchResult]:
    sent = iter([balance_pb2.AuthorizeBatch(requests=requests) for requests in messages])
    return list(client.balance.AuthorizeBatches(sent, timeout=STREAM_TIMEOUT_S))


def held_and_available(client: TariffClient, customer_id: str) -> tuple[str, str]:
    balance = client.get_balance(customer_id)
    return str(balance.credits_held), str(balance.credits_available)


def test_a_message_whose_answers_cannot_fit_even_without_messages_is_refused_naming_the_limit(
    server: ServerProcess,
) -> None:
    """10,000 checks for an unknown customer `x`, each request_id 90 bytes: a request is its entry (2 bytes),
    request_id (2 + 90), customer_id (3) and event_type (3), 100 bytes, the message 1,000,000 bytes, within 1 MiB.
    Each answer, its message left out, is its entry (2), request_id (92), reason UNKNOWN_CUSTOMER (18) and the
    amounts "0" and "0" (3 each): 118 bytes, 1,180,000 for the message, past 1,048,576. The message before it is
    answered; this one is refused whole with the limit and what to do, and the stream ends. Sent again as two
    messages of 5,000 (590,000 bytes of answers each), every request is answered."""
    checks = [
        balance_pb2.AuthorizeRequest(request_id=f"{i:090d}", customer_id="x", event_type="s") for i in range(10_000)
    ]
    assert balance_pb2.AuthorizeBatch(requests=checks).ByteSize() == 1_000_000
    first = [balance_pb2.AuthorizeRequest(request_id="before", customer_id="x", event_type="s")]
    answered: list[balance_pb2.AuthorizeBatchResult] = []

    def send() -> None:
        sent = iter([balance_pb2.AuthorizeBatch(requests=first), balance_pb2.AuthorizeBatch(requests=checks)])
        with server.client() as client:
            for result in client.balance.AuthorizeBatches(sent, timeout=STREAM_TIMEOUT_S):
                answered.append(result)

    code, details = refusal(send)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == (
        "the answer to this AuthorizeBatch, every message left out, is 1,180,000 bytes, more than this server"
        " sends (--message-mb-max 1 MiB): send fewer requests a message (nothing of this one was held or"
        " answered), or serve with --message-mb-max 2 or more (and read it with a client accepting as much)"
    )
    assert [[a.request_id for a in result.responses] for result in answered] == [["before"]]
    with server.client() as client:
        halves = batches(client, checks[:5_000], checks[5_000:])
    assert [a.request_id for result in halves for a in result.responses] == [c.request_id for c in checks]
    assert {(a.allowed, a.reason) for result in halves for a in result.responses} == {(False, "UNKNOWN_CUSTOMER")}
    assert all(result.ByteSize() <= MESSAGE_BYTES_MAX for result in halves)


def test_a_message_of_holds_whose_answer_might_not_fit_is_refused_before_anything_is_held(
    server: ServerProcess,
) -> None:
    """10,000 holds of 1 credit each (n=1) for `gate`, unnamed, request_ids of 70 bytes: a request is its entry
    (2), request_id (72), customer_id (6), event_type (3), values {n: 1} (14) and reserve (2), 99 bytes, the message
    990,000. Allowed, each answer would be 127 bytes (its entry 2, request_id 72, allowed 2, reason OK 4, cost "1"
    3, credits_available such as "999999" 8, the reservation_id the server makes, "r-" and 32 hex digits, 36):
    1,270,000, past 1 MiB, which gRPC refused to send after the holds were committed. A hold's answer is decided
    when its command applies, so each counts at its largest: its entry (3), request_id (72), allowed (2), the
    longest reason (24), two amounts of an i128's 41 characters (86) and its reservation_id (36), 223 bytes,
    2,230,000 for the message. It is refused whole and nothing is held; resent as four messages of 2,500 (557,500
    bytes at most each), every hold is placed once: 10,000 credits held."""
    with server.client() as client:
        funded(client, "gate")
    holds = [
        balance_pb2.AuthorizeRequest(
            request_id=f"{i:070d}", customer_id="gate", event_type="s", values={"n": 1.0}, reserve=True
        )
        for i in range(10_000)
    ]
    assert balance_pb2.AuthorizeBatch(requests=holds).ByteSize() == 990_000
    with server.client() as client:
        code, details = refusal(lambda: batches(client, holds))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == (
            "the answer to this AuthorizeBatch, each hold request counted at its largest answer, may take up to"
            " 2,230,000 bytes, more than this server sends (--message-mb-max 1 MiB): send fewer"
            " requests a message (nothing of this one was held or answered), or serve with --message-mb-max 3 or"
            " more (and read it with a client accepting as much)"
        )
        assert held_and_available(client, "gate") == ("0", "1000000")
        quarters = batches(client, *(holds[i : i + 2_500] for i in range(0, 10_000, 2_500)))
        answers = [a for result in quarters for a in result.responses]
        assert [a.request_id for a in answers] == [h.request_id for h in holds]
        assert {(a.allowed, a.reason) for a in answers} == {(True, "OK")}
        assert len({a.reservation_id for a in answers}) == 10_000
        assert held_and_available(client, "gate") == ("10000", "990000")
