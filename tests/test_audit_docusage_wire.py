"""A sentence-by-sentence audit of usage.proto and balance.proto (IngestUsage, IngestUsageBatch, Authorize,
AuthorizeStream, AuthorizeBatches, ReleaseReservation, GetBalance, WatchBalance) and the README sections on them,
over the wire: what the earlier audits left unpinned.

The server runs with `--message-mb-max 1`, so that a message past the limit is cheap to send.

Catalogue (rate card `card`, pricing unit credits, version 1 in force from 40 days ago): product `p` (event type
`e`, SUM of `n`) at 1 credit a unit. Each customer has an ALLOW contract from 5 hours ago, so its usage of the
last minutes is in its current period, and a PREPAID grant of 10 credits where a test says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, release, serving, this_hour_ms, unit
from tests.serverproc import ServerProcess, wait_for

MESSAGE_BYTES_MAX = 1024 * 1024  # --message-mb-max 1
NO_PROXY = [("grpc.enable_http_proxy", 0)]  # the server is on 127.0.0.1, whatever the environment says
AT_MS = now_ms() - 60_000  # every event's time: a resend is identical
# Instants above are taken at import: conftest.py skips the module once a calendar month has turned since.
pytestmark = pytest.mark.clock_at_import


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="p", event_type="e", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("p", "1")])
    )
    effective_from = stamp(this_hour_ms() - 40 * 24 * HOUR_MS)
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=effective_from)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-docusage")
    yield from serving(ServerProcess(root / "data", extra_args=["--message-mb-max", "1"]), catalogue)


def customer(client: TariffClient, customer_id: str, *, credits: str = "") -> None:
    open_contract(client, customer_id, f"k-{customer_id}", this_hour_ms() - 5 * HOUR_MS, rate_card_id="card")
    if credits:
        grant = contracts_pb2.Grant(
            id=f"g-{customer_id}", customer_id=customer_id, kind=contracts_pb2.PREPAID, amount=credits, paid_amount="1"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def event(transaction_id: str, customer_id: str, n: float) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="e",
        timestamp_ms=AT_MS,
        values={"n": n},
    )


def test_a_stream_message_past_the_size_limit_ends_the_stream_at_once_and_a_resend_counts_each_event_once(
    server: ServerProcess,
) -> None:
    """README "What the server does today" (Usage) and usage.proto IngestUsage: a message past --message-mb-max
    is refused by gRPC as it arrives, before the server reads it: the stream ends RESOURCE_EXHAUSTED at once,
    nothing of that message or after it is applied, and a batch sent before it that still awaited its ack may have
    been committed without its ack being sent (gRPC sends nothing more on the call). Resending both batches then
    counts b1's event once (accepted or duplicate) and applies b3's: charges 1 + 1 = 2 credits.

    Before the docs said so, README promised that the batches before it "stay acknowledged": on this machine b1's
    ack was mostly not sent, its event committed all the same."""
    with server.client() as client:
        customer(client, "big-usage")
        first = usage_pb2.UsageBatch(batch_id="b1", events=[event("o1", "big-usage", 1)])
        too_large = usage_pb2.UsageBatch(batch_id="B" * (MESSAGE_BYTES_MAX + 1), events=[event("o2", "big-usage", 5)])
        after = usage_pb2.UsageBatch(batch_id="b3", events=[event("o3", "big-usage", 1)])
        acks: list[usage_pb2.IngestAck] = []
        with pytest.raises(TariffError) as ended:
            acks.extend(client.usage.IngestUsage(iter([first, too_large, after])))
        assert ended.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [(ack.batch_id, ack.accepted) for ack in acks] in ([], [("b1", 1)])
        resent = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[event("o1", "big-usage", 1)]))
        assert resent.accepted + resent.duplicates == 1 and not resent.rejected
        assert not acks or resent.duplicates == 1  # acknowledged, so committed
        then = client.usage.IngestUsageBatch(after)
        assert (then.accepted, then.duplicates, list(then.rejected)) == (1, 0, [])
        assert client.get_balance("big-usage").period_charges == "2"


def test_an_authorize_batches_message_past_the_size_limit_ends_the_stream_and_a_named_hold_retried_holds_once(
    server: ServerProcess,
) -> None:
    """balance.proto AuthorizeBatches and README Limits: a message past --message-mb-max ends the stream with
    RESOURCE_EXHAUSTED from gRPC at once; the answer to an earlier message whose holds awaited their commit may
    not be sent, those holds placed all the same. Retrying the hold by its reservation_id answers it again and
    holds nothing more: 10 credits, a hold of 1 unit at 1 credit: held 1, available 9, whatever was answered."""
    request = balance_pb2.AuthorizeRequest(
        request_id="h", customer_id="big-holds", event_type="e", values={"n": 1}, reserve=True, reservation_id="mb-1"
    )
    filler = balance_pb2.AuthorizeRequest(request_id="x" * 200, customer_id="big-holds", event_type="e")
    too_large = balance_pb2.AuthorizeBatch(requests=[filler] * (MESSAGE_BYTES_MAX // 200 + 1))
    assert too_large.ByteSize() > MESSAGE_BYTES_MAX
    with server.client() as client:
        customer(client, "big-holds", credits="10")
        answers: list[balance_pb2.AuthorizeBatchResult] = []
        with pytest.raises(TariffError) as ended:
            messages = [balance_pb2.AuthorizeBatch(requests=[request]), too_large]
            answers.extend(client.balance.AuthorizeBatches(iter(messages)))
        assert ended.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [[(r.reason, r.reservation_id) for r in a.responses] for a in answers] in ([], [[("OK", "mb-1")]])
        retried = client.balance.Authorize(request)
        assert (retried.allowed, retried.reason, retried.reservation_id) == (True, "OK", "mb-1")
        balance = client.get_balance("big-holds")
        assert (balance.credits_held, balance.credits_available) == ("1", "9")
        assert release(client, "big-holds", "mb-1") == "1"  # no expiry left to journal later


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (data under 128 bytes)."""
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


# An AuthorizeRequest whose event_type is not UTF-8: no protobuf parser takes it, so its message does not decode.
UNDECODABLE_REQUEST = _field(1, b"u") + _field(2, b"no-utf8") + _field(3, b"e\xff")


def test_a_message_that_does_not_decode_ends_authorize_batches_after_the_answers_before_it(
    server: ServerProcess,
) -> None:
    """balance.proto AuthorizeBatches: malformed requests are answered in-band, but a message that does not decode
    as an AuthorizeBatch at all (a string that is not UTF-8) is refused whole, as a missing request_id is:
    INVALID_ARGUMENT, the answer to the message before it sent first, and the message after it never decided (its
    hold not placed). 10 credits, one hold of 2 units at 1 credit: held 2, available 8."""
    with server.client() as client, grpc.insecure_channel(server.target, options=NO_PROXY) as channel:
        customer(client, "no-utf8", credits="10")
        batches = channel.stream_stream(
            "/tariff.v1.BalanceService/AuthorizeBatches",
            request_serializer=lambda data: data,
            response_deserializer=balance_pb2.AuthorizeBatchResult.FromString,
        )

        def hold(reservation_id: str) -> bytes:
            request = balance_pb2.AuthorizeRequest(
                request_id=reservation_id,
                customer_id="no-utf8",
                event_type="e",
                values={"n": 2},
                reserve=True,
                reservation_id=reservation_id,
            )
            return balance_pb2.AuthorizeBatch(requests=[request]).SerializeToString()

        answers: list[balance_pb2.AuthorizeBatchResult] = []
        with pytest.raises(grpc.RpcError) as ended:
            answers.extend(batches(iter([hold("before"), _field(1, UNDECODABLE_REQUEST), hold("after")])))
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(ended.value.details()).startswith("requests[0].event_type: not an AuthorizeBatch")
        assert [[(r.request_id, r.reason, r.reservation_id) for r in a.responses] for a in answers] == [
            [("before", "OK", "before")]
        ]
        balance = client.get_balance("no-utf8")
        assert (balance.credits_held, balance.credits_available) == ("2", "8")
        with pytest.raises(TariffError) as unknown:
            client.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id="no-utf8", reservation_id="after")
            )
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        assert release(client, "no-utf8", "before") == "2"  # no expiry left to journal later


def test_a_request_that_does_not_decode_ends_authorize_stream_after_the_answers_before_it(
    server: ServerProcess,
) -> None:
    """balance.proto AuthorizeStream: a request that does not decode (a string that is not UTF-8) ends the stream
    with INVALID_ARGUMENT after the answers to the requests before it (1 unit at 1 credit: estimated 1)."""
    with server.client() as client, grpc.insecure_channel(server.target, options=NO_PROXY) as channel:
        customer(client, "no-utf8-stream", credits="10")
        stream = channel.stream_stream(
            "/tariff.v1.BalanceService/AuthorizeStream",
            request_serializer=lambda data: data,
            response_deserializer=balance_pb2.AuthorizeResponse.FromString,
        )
        first = balance_pb2.AuthorizeRequest(
            request_id="first", customer_id="no-utf8-stream", event_type="e", values={"n": 1}
        ).SerializeToString()
        answers: list[balance_pb2.AuthorizeResponse] = []
        with pytest.raises(grpc.RpcError) as ended:
            answers.extend(stream(iter([first, UNDECODABLE_REQUEST, first])))
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [(a.request_id, a.reason, a.estimated_cost) for a in answers] == [("first", "OK", "1")]


def test_a_grant_not_started_shows_its_amount_remaining_and_joins_the_balance_only_when_it_starts(
    server: ServerProcess,
) -> None:
    """balance.proto GrantBalance.remaining and Balance.credits_remaining: a grant starting tomorrow is listed with
    remaining = amount - drawn - expired = 40 - 0 - 0 = 40, while credits_remaining (started, unexpired grants
    only), credits_available and Authorize's credits_available stay 0, so 1 unit at 1 credit is overage."""
    with server.client() as client:
        customer(client, "not-yet")
        grant = contracts_pb2.Grant(
            id="tomorrow",
            customer_id="not-yet",
            kind=contracts_pb2.PREPAID,
            amount="40",
            paid_amount="20",
            starts_at=stamp(now_ms() + 24 * HOUR_MS),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        balance = client.get_balance("not-yet")
        assert [(g.grant_id, g.amount, g.drawn, g.remaining, g.expired, g.held) for g in balance.grants] == [
            ("tomorrow", "40", "0", "40", "0", "0")
        ]
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("0", "0", "0")
        request = balance_pb2.AuthorizeRequest(customer_id="not-yet", event_type="e", values={"n": 1})
        decision = client.balance.Authorize(request)
        assert (decision.allowed, decision.reason, decision.estimated_cost, decision.credits_available) == (
            True,
            "OVERAGE_ALLOWED",
            "1",
            "0",
        )


def test_a_reservation_id_without_reserve_is_answered_in_band_with_no_credit_on_both_streams(
    server: ServerProcess,
) -> None:
    """balance.proto AuthorizeRequest.reservation_id and AuthorizeResponse.credits_available: a reservation_id
    without reserve is INVALID_REQUEST in-band on AuthorizeStream and AuthorizeBatches, answered credits_available
    "0" as a request refused for a bad reservation_id is, though the customer has 10 credits; nothing is held."""
    request = balance_pb2.AuthorizeRequest(
        request_id="q", customer_id="rid-only", event_type="e", values={"n": 1}, reservation_id="r1"
    )
    with server.client() as client:
        customer(client, "rid-only", credits="10")
        streamed = list(client.balance.AuthorizeStream(iter([request])))
        batched = [
            answer
            for result in client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[request])]))
            for answer in result.responses
        ]
        for answer in (*streamed, *batched):
            assert (answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available) == (
                False,
                "INVALID_REQUEST",
                "0",
                "0",
            )
            assert answer.message == "reservation_id: is only read with reserve=true"
        balance = client.get_balance("rid-only")
        assert (balance.credits_held, balance.credits_available) == ("0", "10")


def test_a_usage_batch_that_does_not_decode_ends_the_stream_after_the_acks_before_it(server: ServerProcess) -> None:
    """usage.proto IngestUsage: a batch that does not decode as a UsageBatch (a transaction_id that is not UTF-8)
    is refused whole, INVALID_ARGUMENT: b1 before it is acknowledged, b3 after it is not applied. Resending b1 and
    b3 answers a duplicate and an accepted event: charges 1 + 1 = 2 credits."""
    first = usage_pb2.UsageBatch(batch_id="b1", events=[event("n1", "no-utf8-usage", 1)])
    after = usage_pb2.UsageBatch(batch_id="b3", events=[event("n3", "no-utf8-usage", 1)])
    undecodable = _field(2, _field(1, b"n2\xff") + _field(2, b"no-utf8-usage") + _field(3, b"e"))
    with server.client() as client, grpc.insecure_channel(server.target, options=NO_PROXY) as channel:
        customer(client, "no-utf8-usage")
        stream = channel.stream_stream(
            "/tariff.v1.UsageService/IngestUsage",
            request_serializer=lambda data: data,
            response_deserializer=usage_pb2.IngestAck.FromString,
        )
        acks: list[usage_pb2.IngestAck] = []
        with pytest.raises(grpc.RpcError) as ended:
            acks.extend(stream(iter([first.SerializeToString(), undecodable, after.SerializeToString()])))
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a UsageBatch" in str(ended.value.details())
        assert [(ack.batch_id, ack.accepted) for ack in acks] == [("b1", 1)]
        resent = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[*first.events, *after.events]))
        assert (resent.accepted, resent.duplicates, list(resent.rejected)) == (1, 1, [])
        assert client.get_balance("no-utf8-usage").period_charges == "2"


def test_as_of_seq_counts_holds_releases_and_the_clocks_expiries_but_not_retries_or_denials(
    server: ServerProcess,
) -> None:
    """balance.proto Balance.as_of_seq, README Reliability: every record that changed state moves it by one: a hold
    placed, its release, the clock's expiry of a hold; an identical hold retried, a release retried and a hold denied
    (no contract covers now for `ended`, a customer whose only contract ended) take no record. 10 credits: hold 2
    (held 2), release (held 0), hold 3 with a 200 ms TTL (held 3), then its expiry (held 0)."""
    with server.client() as client:
        customer(client, "seqs", credits="10")
        seq = client.get_balance("seqs").as_of_seq

        def hold(reservation_id: str, n: float, ttl_ms: int = 60_000) -> balance_pb2.AuthorizeResponse:
            request = balance_pb2.AuthorizeRequest(
                customer_id="seqs",
                event_type="e",
                values={"n": n},
                reserve=True,
                reservation_id=reservation_id,
                reservation_ttl=Duration(seconds=ttl_ms // 1000, nanos=ttl_ms % 1000 * 1_000_000),
            )
            answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(request)
            return answer

        def moved() -> tuple[int, str]:
            balance = client.get_balance("seqs")
            return balance.as_of_seq - seq, balance.credits_held

        assert hold("s1", 2).allowed and moved() == (1, "2")
        assert hold("s1", 2).message.startswith("already held") and moved() == (1, "2")
        assert release(client, "seqs", "s1") == "2" and moved() == (2, "0")
        assert release(client, "seqs", "s1") == "2" and moved() == (2, "0")
        assert hold("s2", 3, ttl_ms=200).allowed and moved() == (3, "3")
        assert wait_for(lambda: moved() == (4, "0"), timeout_s=30), moved()
        end_ms = this_hour_ms() - HOUR_MS
        open_contract(client, "ended", "k-ended", end_ms - 2 * HOUR_MS, end_ms, rate_card_id="card")
        ended_seq = client.get_balance("ended").as_of_seq
        denied = client.balance.Authorize(
            balance_pb2.AuthorizeRequest(customer_id="ended", event_type="e", values={"n": 1}, reserve=True)
        )
        assert (denied.allowed, denied.reason, denied.reservation_id) == (False, "NO_ACTIVE_CONTRACT", "")
        assert client.get_balance("ended").as_of_seq == ended_seq


def test_pricing_unit_is_the_cards_of_the_contract_in_force_else_the_latest_and_empty_without_one(
    server: ServerProcess,
) -> None:
    """balance.proto Balance.pricing_unit: a customer with no contract has no card: "" (and no current period:
    period_charges "0", period_start unset); one whose only contract starts tomorrow reads that card's "credits"."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="bare", name="bare"))
        bare = client.get_balance("bare")
        assert (bare.pricing_unit, bare.period_charges, bare.HasField("period_start")) == ("", "0", False)
        open_contract(client, "soon", "k-soon", this_hour_ms() + 24 * HOUR_MS, rate_card_id="card")
        soon = client.get_balance("soon")
        assert (soon.pricing_unit, soon.period_charges, soon.HasField("period_start")) == ("credits", "0", False)


def test_recognized_revenue_is_drawn_times_the_cost_basis_rounded_half_even_once(server: ServerProcess) -> None:
    """balance.proto GrantBalance.recognized_revenue: drawn x paid_amount / amount, rounded half-even to 10^-12
    once: 1 paid for 3 credits, 1 drawn: 0.333333333333; 2 drawn: 0.666666666667 (not twice 0.333333333333)."""
    with server.client() as client:
        customer(client, "thirds")
        grant = contracts_pb2.Grant(
            id="g-thirds", customer_id="thirds", kind=contracts_pb2.PREPAID, amount="3", paid_amount="1"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        seen = []
        for transaction_id in ("t1", "t2"):
            client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[event(transaction_id, "thirds", 1)]))
            (shown,) = client.get_balance("thirds").grants
            seen.append((shown.drawn, shown.remaining, shown.recognized_revenue))
        assert seen == [("1", "2", "0.333333333333"), ("2", "1", "0.666666666667")]
