"""Retries under concurrency, audited over the wire (tests/serverproc.py): clients on several machines that
retry on timeouts send the same request at once, each on its own channel, released together by a barrier.

tests/test_audit_reliability_wire.py retries every state-changing call one after the other; this sends each at
once from many callers and checks what the proto comments promise for that case:

- the same usage batch on several IngestUsage streams and IngestUsageBatch calls: one acceptance per
  (customer_id, transaction_id), every other ack counts it a duplicate, the balance is charged once;
- the same transaction id for two customers: both accepted; with different content: one accepted, the rest
  DUPLICATE_CONFLICT;
- every keyed admin call (customers, contracts, overrides, grants, top-up policies, alerts, drafts, publishes,
  rollbacks, closes): one change (one journal record), every caller answered alike; the same key with
  different requests: one wins, the others ALREADY_EXISTS (or the RPC's documented refusal), never two;
- holds: the same reservation_id from many callers holds once, with another amount is refused; holds racing
  the usage that settles them;
- after each race, every grant's credit is conserved: amount = drawn + remaining + expired, none negative, the
  holds within what remains.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from tariff import AlreadyExists, FailedPrecondition, TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_invoices_wire import ms, ts

CARD = "conc-card"
CUSTOMER = "conc"
OTHER = "conc-other"
JAN_2025 = ms("2025-01-01T00:00:00")
JAN = ms("2026-01-01T00:00:00")
CONTRACT = "conc-contract"
OTHER_CONTRACT = "conc-other-contract"
HOUR_MS = 3_600_000
CALLERS = 8  # callers racing each request, each on its own channel
ROUNDS = 6  # each race run this many times, with fresh keys
UNITS = ("credits", "USD", "EUR", "GBP", "JPY", "CHF", "KWD", "CAD")  # a pricing unit for each caller

PRODUCT = pricing_pb2.Product(
    id="unit", name="unit", event_type="unit", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["k"]
)
RATE_V1 = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="1"))
RATE_V2 = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="2"))


def race(server: ServerProcess, calls: list[Callable[[TariffClient], Any]]) -> list[Any]:
    """Each call on a client (channel) of its own, all released at once by a barrier; each one's answer, or the
    refusal it raised, in the order given."""
    clients = [server.client() for _ in calls]
    for client in clients:  # connected before the barrier, so that the calls leave together
        client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=CUSTOMER))
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> Any:
        barrier.wait()
        try:
            return calls[index](clients[index])
        except TariffError as exc:
            return exc

    try:
        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(run, range(len(calls))))
    finally:
        for client in clients:
            client.close()


def seq_of(client: TariffClient) -> int:
    seq: int = client.get_balance(CUSTOMER).as_of_seq
    return seq


def conserved(client: TariffClient, customer_id: str = CUSTOMER) -> balance_pb2.Balance:
    """The customer's balance, asserting every grant's credit is conserved and nothing is negative."""
    balance = client.get_balance(customer_id)
    for grant in balance.grants:
        amount, drawn, remaining, expired, held = (
            Decimal(grant.amount),
            Decimal(grant.drawn),
            Decimal(grant.remaining),
            Decimal(grant.expired),
            Decimal(grant.held),
        )
        assert amount == drawn + remaining + expired, f"grant {grant.grant_id} does not add up: {grant}"
        assert min(drawn, remaining, expired, held) >= 0, f"grant {grant.grant_id} went negative: {grant}"
        assert held <= remaining or expired > 0, f"grant {grant.grant_id} holds more than it has: {grant}"
    held = sum((Decimal(g.held) for g in balance.grants), Decimal(0))
    assert Decimal(balance.credits_held) == held, balance
    assert Decimal(balance.credits_available) == Decimal(balance.credits_remaining) - held, balance
    return balance


def setup(client: TariffClient) -> None:
    """Two customers on one rate card (unit price 1), each with a contract from 2025 and 1,000 credits."""
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=PRODUCT))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[RATE_V1], request_id="v1")
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(JAN_2025))
    )
    for customer_id, contract_id in ((CUSTOMER, CONTRACT), (OTHER, OTHER_CONTRACT)):
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=contract_id, customer_id=customer_id, rate_card_id=CARD, starting_at=ts(JAN_2025)
            )
        )
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    id=f"{customer_id}-g", customer_id=customer_id, kind=contracts_pb2.PREPAID, amount="1000"
                )
            )
        )


@pytest.fixture
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory(name="concurrency")
    with server.client() as client:
        setup(client)
    yield server


def event(
    transaction_id: str, n: float, customer_id: str = CUSTOMER, k: str = "a", reservation_id: str = ""
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="unit",
        timestamp_ms=now_ms() - 60_000,
        dimensions={"k": k},
        values={"n": n},
        reservation_id=reservation_id,
    )


def by_stream(batch: usage_pb2.UsageBatch) -> Callable[[TariffClient], usage_pb2.IngestAck]:
    def send(client: TariffClient) -> usage_pb2.IngestAck:
        (ack,) = list(client.usage.IngestUsage(iter([batch])))
        assert isinstance(ack, usage_pb2.IngestAck)
        return ack

    return send


def by_unary(batch: usage_pb2.UsageBatch) -> Callable[[TariffClient], usage_pb2.IngestAck]:
    def send(client: TariffClient) -> usage_pb2.IngestAck:
        ack = client.usage.IngestUsageBatch(batch)
        assert isinstance(ack, usage_pb2.IngestAck)
        return ack

    return send


def acks(answers: list[Any]) -> list[usage_pb2.IngestAck]:
    for answer in answers:
        assert isinstance(answer, usage_pb2.IngestAck), answer
    return answers


# ---------------------------------------------------------------------------------------------
# Usage


def test_the_same_batch_on_many_streams_and_calls_at_once_is_accepted_once_and_charged_once(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            before = conserved(client)
            events = [event(f"same-{round_}-{i}", 1 + i % 3) for i in range(20)]
            batch = usage_pb2.UsageBatch(batch_id=f"b-{round_}", events=events)
            sends = [by_stream(batch) if i % 2 else by_unary(batch) for i in range(CALLERS)]
            answers = acks(race(server, sends))
            for ack in answers:
                assert ack.batch_id == batch.batch_id
                assert (ack.accepted + ack.duplicates, list(ack.rejected)) == (len(events), []), ack
            assert sum(ack.accepted for ack in answers) == len(events), answers
            after = conserved(client)
            charged = sum(Decimal(str(e.values["n"])) for e in events)
            assert Decimal(after.credits_remaining) == Decimal(before.credits_remaining) - charged
            assert Decimal(after.period_charges) == Decimal(before.period_charges) + charged
            # Each accepting ack names the record that made it durable; the duplicates' name one at or after it.
            accepting = [ack.journal_seq for ack in answers if ack.accepted]
            assert all(ack.journal_seq >= min(accepting) for ack in answers), answers


def test_the_same_transaction_id_for_two_customers_at_once_is_accepted_for_each(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            mine = usage_pb2.UsageBatch(events=[event(f"shared-{round_}", 5)])
            theirs = usage_pb2.UsageBatch(events=[event(f"shared-{round_}", 5, customer_id=OTHER)])
            sends = [by_unary(mine if i % 2 else theirs) for i in range(CALLERS)]
            answers = acks(race(server, sends))
            for customer in (mine, theirs):
                own = [a for a, s in zip(answers, range(CALLERS), strict=True) if (s % 2 == 1) == (customer is mine)]
                assert sum(a.accepted for a in own) == 1, own
                assert sum(a.duplicates for a in own) == len(own) - 1, own
        conserved(client)
        conserved(client, OTHER)
        assert Decimal(client.get_balance(CUSTOMER).credits_remaining) == 1000 - 5 * ROUNDS
        assert Decimal(client.get_balance(OTHER).credits_remaining) == 1000 - 5 * ROUNDS


def test_the_same_transaction_id_with_different_content_at_once_is_accepted_once_the_rest_conflicts(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            before = Decimal(conserved(client).credits_remaining)
            sends = [by_unary(usage_pb2.UsageBatch(events=[event(f"clash-{round_}", 1 + i)])) for i in range(CALLERS)]
            answers = acks(race(server, sends))
            winners = [i for i, ack in enumerate(answers) if ack.accepted]
            assert len(winners) == 1, answers
            for i, ack in enumerate(answers):
                if i != winners[0]:
                    assert [r.reason for r in ack.rejected] == [usage_pb2.DUPLICATE_CONFLICT], ack
                    assert (ack.accepted, ack.duplicates) == (0, 0), ack
            after = Decimal(conserved(client).credits_remaining)
            assert before - after == 1 + winners[0]


# ---------------------------------------------------------------------------------------------
# Keyed admin calls


Call = Callable[[TariffClient], Message]


def identical_at_once(
    server: ServerProcess, call: Call, same: Callable[[Message], Message] = lambda m: m, records: int = 1
) -> Message:
    """`call` from every caller at once: every one answered alike (`same` of the answer), and the journal records
    one call makes (a publish that re-rates: two, the publish and its re-rating's completion)."""
    with server.client() as client:
        seq = seq_of(client)
        answers = race(server, [call] * CALLERS)
        assert all(isinstance(a, Message) for a in answers), answers
        assert len({same(a).SerializeToString(deterministic=True) for a in answers}) == 1, answers
        assert seq_of(client) == seq + records, "one change"
        conserved(client)
    first: Message = answers[0]
    return first


def one_wins_at_once(
    server: ServerProcess, calls: list[Call], refusal: type[TariffError] = AlreadyExists, records: int = 1
) -> int:
    """Different requests under one key at once: exactly one answered, the others refused with `refusal`, one
    journal record. The winner's index."""
    with server.client() as client:
        seq = seq_of(client)
        answers = race(server, calls)
        winners = [i for i, a in enumerate(answers) if isinstance(a, Message)]
        assert len(winners) == 1, answers
        assert all(isinstance(a, refusal) for i, a in enumerate(answers) if i != winners[0]), answers
        assert seq_of(client) == seq + records, "one change"
        conserved(client)
    return winners[0]


def grant_of(id_: str, amount: str, request_id: str = "") -> Call:
    grant = contracts_pb2.Grant(id=id_, customer_id=CUSTOMER, kind=contracts_pb2.PREPAID, amount=amount)
    return lambda t: t.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant, request_id=request_id))


def test_grant_credits_with_one_key_from_many_callers_at_once_grants_once(server: ServerProcess) -> None:
    for round_ in range(ROUNDS):
        identical_at_once(server, grant_of(f"g-{round_}", "10"))
        identical_at_once(server, grant_of("", "10", request_id=f"r-{round_}"))
        winner = one_wins_at_once(server, [grant_of(f"gx-{round_}", str(10 + i)) for i in range(CALLERS)])
        with server.client() as client:
            (grant,) = [g for g in conserved(client).grants if g.grant_id == f"gx-{round_}"]
            assert Decimal(grant.amount) == 10 + winner
        one_wins_at_once(server, [grant_of("", str(10 + i), request_id=f"rx-{round_}") for i in range(CALLERS)])
    with server.client() as client:
        assert len(conserved(client).grants) == 1 + 4 * ROUNDS
        assert Decimal(client.get_balance(CUSTOMER).credits_remaining) == 1000 + ROUNDS * (10 + 10) + sum(
            Decimal(g.amount) for g in client.get_balance(CUSTOMER).grants if g.grant_id.startswith(("gx-", "rx-"))
        )


def customer_calls(round_: int) -> list[tuple[Call, list[Call] | None]]:
    customer = f"cust-{round_}"
    contract = f"ctr-{round_}"

    def create_contract(price: str) -> Call:
        return lambda t: t.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=contract, customer_id=customer, rate_card_id=CARD, starting_at=ts(JAN_2025), overage_price=price
            )
        )

    def override(id_: str, multiplier: str) -> Call:
        o = contracts_pb2.PriceOverride(id=id_, product_id="unit", match={"k": "b"}, multiplier=multiplier)
        return lambda t: t.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract, override=o))

    def alert(id_: str, threshold: str) -> Call:
        request = alerts_pb2.CreateAlertRequest(
            customer_id=customer, type=alerts_pb2.LOW_BALANCE, threshold=threshold, id=id_
        )
        return lambda t: t.alerts.CreateAlert(request)

    policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="5", price_per_credit="0.01", max_per_period=1)
    return [
        (
            lambda t: t.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer, name="n")),
            [
                (
                    lambda n: (
                        lambda t: t.contracts.CreateCustomer(
                            contracts_pb2.CreateCustomerRequest(id=f"{customer}x", name=n)
                        )
                    )
                )(f"n{i}")
                for i in range(CALLERS)
            ],
        ),
        (create_contract("1"), None),
        (override("half", "0.5"), [override("other", f"0.{i + 1}") for i in range(CALLERS)]),
        (override("", "0.25"), None),
        (alert(f"low-{round_}", "5"), [alert(f"low2-{round_}", str(i + 1)) for i in range(CALLERS)]),
        (alert("", "7"), None),
        (
            lambda t: t.contracts.SetTopUpPolicy(
                contracts_pb2.SetTopUpPolicyRequest(contract_id=contract, top_up=policy)
            ),
            None,
        ),
    ]


def test_customers_contracts_overrides_alerts_and_policies_from_many_callers_at_once_change_once(
    server: ServerProcess,
) -> None:
    for round_ in range(ROUNDS):
        for call, clashes in customer_calls(round_):
            identical_at_once(server, call)
            if clashes is not None:
                one_wins_at_once(server, clashes)


def draft(request_id: str, rate: pricing_pb2.Rate) -> Call:
    return lambda t: t.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[rate], request_id=request_id)
    )


def publish(version: int, at_ms: int) -> Call:
    return lambda t: t.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version, effective_from=ts(at_ms))
    )


def rollback(to_version: int, at_ms: int) -> Call:
    return lambda t: t.pricing.RollbackRateCard(
        pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=to_version, effective_from=ts(at_ms))
    )


def close(period_ms: int) -> Call:
    return lambda t: t.invoices.ClosePeriod(
        invoices_pb2.ClosePeriodRequest(customer_id=CUSTOMER, period_start=ts(period_ms))
    )


def version_of(answer: Message) -> Message:
    assert isinstance(answer, pricing_pb2.PublishVersionResponse)
    return answer.version


def product(id_: str, event_type: str) -> Call:
    made = pricing_pb2.Product(id=id_, name=id_, event_type=event_type, aggregation=pricing_pb2.COUNT)
    return lambda t: t.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=made))


def rate_card(id_: str, pricing_unit: str) -> Call:
    return lambda t: t.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=id_, pricing_unit=pricing_unit))


def test_products_and_rate_cards_from_many_callers_at_once_are_created_once(server: ServerProcess) -> None:
    for round_ in range(ROUNDS):
        identical_at_once(server, product(f"p-{round_}", "unit"))
        one_wins_at_once(server, [product(f"px-{round_}", f"type-{i}") for i in range(CALLERS)])
        identical_at_once(server, rate_card(f"card-{round_}", "credits"))
        one_wins_at_once(server, [rate_card(f"cardx-{round_}", unit) for unit in UNITS[:CALLERS]])


def test_drafts_publishes_rollbacks_and_closes_from_many_callers_at_once_change_once(server: ServerProcess) -> None:
    hour_ms = now_ms() // HOUR_MS * HOUR_MS
    with server.client() as client:
        # Usage already rated in the hours the publishes re-rate, so that each publish has re-rating to do.
        client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[event("rated", 3)]))
    for round_ in range(ROUNDS):
        rate = RATE_V2 if round_ % 2 else RATE_V1
        version = identical_at_once(server, draft(f"d-{round_}", rate))
        assert isinstance(version, pricing_pb2.RateCardVersion)
        one_wins_at_once(
            server,
            [
                draft(f"dx-{round_}", pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price=str(i + 3))))
                for i in range(CALLERS)
            ],
        )
        at_ms = hour_ms - (ROUNDS - round_) * HOUR_MS
        identical_at_once(server, publish(version.version, at_ms), version_of, records=2)
        # The next draft under one key (its version) from several effective times, all before the draft just
        # published: whichever wins, that draft stays in force from at_ms on.
        one_wins_at_once(
            server,
            [publish(version.version + 1, at_ms - (i + 1) * HOUR_MS) for i in range(CALLERS)],
            FailedPrecondition,
            records=2,
        )
        # Rolled back to prices other than those in force then: the first round's clash, then each round's draft.
        identical_at_once(
            server, rollback(version.version + (round_ == 0), hour_ms + HOUR_MS * (round_ + 1)), version_of
        )
        identical_at_once(server, close(ms(f"2025-{round_ + 2:02d}-01T00:00:00")))


# ---------------------------------------------------------------------------------------------
# Holds


def hold_request(reservation_id: str, n: float, customer_id: str = CUSTOMER) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=f"req-{reservation_id}",
        customer_id=customer_id,
        event_type="unit",
        dimensions={"k": "a"},
        values={"n": n},
        reserve=True,
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=3600),
    )


def by_authorize(request: balance_pb2.AuthorizeRequest) -> Call:
    return lambda t: t.balance.Authorize(request)


def by_authorize_stream(request: balance_pb2.AuthorizeRequest) -> Call:
    def send(client: TariffClient) -> Message:
        (answer,) = list(client.balance.AuthorizeStream(iter([request])))
        found: Message = answer
        return found

    return send


def by_authorize_batches(request: balance_pb2.AuthorizeRequest) -> Call:
    def send(client: TariffClient) -> Message:
        (result,) = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[request])])))
        (answer,) = result.responses
        found: Message = answer
        return found

    return send


HOLD_RPCS = (by_authorize, by_authorize_stream, by_authorize_batches)


def the_hold(answer: Message) -> Message:
    """What every answer to one hold repeats: its decision, cost and id (not the credit available then)."""
    assert isinstance(answer, balance_pb2.AuthorizeResponse)
    return balance_pb2.AuthorizeResponse(
        request_id=answer.request_id,
        allowed=answer.allowed,
        reason=answer.reason,
        estimated_cost=answer.estimated_cost,
        reservation_id=answer.reservation_id,
    )


def held(client: TariffClient) -> Decimal:
    return Decimal(conserved(client).credits_held)


def test_one_reservation_id_from_many_callers_at_once_holds_once(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            before = held(client)
            request = hold_request(f"h-{round_}", 3)
            calls = [HOLD_RPCS[i % len(HOLD_RPCS)](request) for i in range(CALLERS)]
            answer = identical_at_once(server, calls[0], the_hold) if round_ == 0 else None
            if answer is None:
                seq = seq_of(client)
                answers = race(server, calls)
                assert len({the_hold(a).SerializeToString() for a in answers}) == 1, answers
                assert seq_of(client) == seq + 1, "one hold"
                answer = answers[0]
            assert isinstance(answer, balance_pb2.AuthorizeResponse)
            assert (answer.allowed, answer.reservation_id) == (True, f"h-{round_}"), answer
            assert held(client) == before + 3


def test_one_reservation_id_with_different_amounts_at_once_holds_one_of_them(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            before = held(client)
            calls = [by_authorize(hold_request(f"hx-{round_}", 1 + i)) for i in range(CALLERS)]
            winner = one_wins_at_once(server, calls)
            assert held(client) == before + 1 + winner
            seq = seq_of(client)
            answers = race(server, [by_authorize_batches(hold_request(f"hy-{round_}", 1 + i)) for i in range(CALLERS)])
            allowed = [a for a in answers if isinstance(a, balance_pb2.AuthorizeResponse) and a.allowed]
            assert len(allowed) == 1, answers
            for a in answers:
                assert isinstance(a, balance_pb2.AuthorizeResponse)
                assert a.allowed or a.reason == "RESERVATION_CONFLICT", a
            assert seq_of(client) == seq + 1
            assert held(client) == before + 1 + winner + Decimal(allowed[0].estimated_cost)


def test_holds_retried_at_once_with_the_usage_settling_them_hold_nothing_after_it(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS * 2):
            reservation_id = f"s-{round_}"
            before = conserved(client)
            request = hold_request(reservation_id, 4)
            settle = usage_pb2.UsageBatch(events=[event(f"settle-{round_}", 2, reservation_id=reservation_id)])
            calls: list[Call] = [HOLD_RPCS[i % len(HOLD_RPCS)](request) for i in range(CALLERS - 1)]
            answers = race(server, [*calls, by_unary(settle)])
            ack = answers[-1]
            assert isinstance(ack, usage_pb2.IngestAck) and ack.accepted == 1, ack
            for answer in answers[:-1]:
                assert isinstance(answer, balance_pb2.AuthorizeResponse) and answer.allowed, answer
            after = conserved(client)
            charged = Decimal(before.credits_remaining) - Decimal(after.credits_remaining)
            assert charged == 2, (before, after)
            reasons = [n.reason for n in ack.notices]
            if reasons == []:  # settled a hold placed before it: every retry after it holds nothing
                assert Decimal(after.credits_held) == Decimal(before.credits_held), (ack, after)
            else:  # came before every hold: charged as any event; the hold placed after it is open
                assert reasons == [usage_pb2.NOTICE_RESERVATION_UNKNOWN], ack
                assert Decimal(after.credits_held) == Decimal(before.credits_held) + 4, (ack, after)
                client.balance.ReleaseReservation(
                    balance_pb2.ReleaseReservationRequest(customer_id=CUSTOMER, reservation_id=reservation_id)
                )


def blocked_customer(client: TariffClient, customer_id: str, credits: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c",
            customer_id=customer_id,
            rate_card_id=CARD,
            starting_at=ts(JAN_2025),
            overage_policy=contracts_pb2.BLOCK,
        )
    )
    client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=f"{customer_id}-g", customer_id=customer_id, kind=contracts_pb2.PREPAID, amount=credits
            )
        )
    )


def test_holds_with_different_ids_at_once_never_hold_more_than_a_blocked_customer_has(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            customer_id = f"blocked-{round_}"
            blocked_customer(client, customer_id, "10")
            calls = [
                HOLD_RPCS[i % len(HOLD_RPCS)](hold_request(f"b-{round_}-{i}", 3, customer_id)) for i in range(CALLERS)
            ]
            answers = race(server, calls)
            allowed = [a for a in answers if isinstance(a, balance_pb2.AuthorizeResponse) and a.allowed]
            for a in answers:
                assert isinstance(a, balance_pb2.AuthorizeResponse), a
                assert a.allowed or a.reason == "INSUFFICIENT_CREDIT", a
            assert len(allowed) == 3, answers
            balance = conserved(client, customer_id)
            assert (Decimal(balance.credits_held), Decimal(balance.credits_available)) == (Decimal(9), Decimal(1)), (
                balance
            )


def test_usage_at_once_buys_at_most_the_policys_top_ups(server: ServerProcess) -> None:
    policy = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="20", price_per_credit="0.5", max_per_period=2)
    with server.client() as client:
        for round_ in range(ROUNDS):
            customer_id = f"topped-{round_}"
            blocked_customer(client, customer_id, "10")
            client.contracts.SetTopUpPolicy(
                contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{customer_id}-c", top_up=policy)
            )
            sends = [
                by_unary(usage_pb2.UsageBatch(events=[event(f"t-{round_}-{i}", 6, customer_id=customer_id)]))
                for i in range(CALLERS)
            ]
            answers = acks(race(server, sends))
            assert sum(a.accepted for a in answers) == CALLERS, answers
            balance = conserved(client, customer_id)
            top_ups = [g for g in balance.grants if g.kind == contracts_pb2.TOP_UP]
            assert len(top_ups) == 2, balance
            granted = sum((Decimal(g.amount) for g in balance.grants), Decimal(0))
            drawn = sum((Decimal(g.drawn) for g in balance.grants), Decimal(0))
            assert Decimal(balance.period_charges) == 6 * CALLERS, balance
            assert drawn + Decimal(balance.overage_amount) == 6 * CALLERS, balance
            assert granted == drawn + Decimal(balance.credits_remaining), balance


def test_a_period_closed_while_usage_for_it_arrives_bills_every_event_acked_accepted(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            period_ms = ms(f"2025-{round_ + 2:02d}-01T00:00:00")
            sends: list[Call] = []
            for i in range(CALLERS - 1):
                late = event(f"late-{round_}-{i}", 1 + i)
                late.timestamp_ms = period_ms + HOUR_MS * (i + 1)
                sends.append(by_unary(usage_pb2.UsageBatch(events=[late])))
            answers = race(server, [close(period_ms), *sends])
            invoice = answers[0]
            assert isinstance(invoice, invoices_pb2.Invoice), invoice
            accepted = 0
            for i, ack in enumerate(acks(answers[1:])):
                if ack.accepted:
                    accepted += 1 + i
                else:
                    assert [r.reason for r in ack.rejected] == [usage_pb2.PERIOD_CLOSED], ack
            again = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=invoice.invoice_number))
            assert again == invoice
            assert Decimal(invoice.subtotal) == accepted, invoice
        conserved(client)


def test_a_batch_resent_on_its_own_stream_and_on_others_at_once_is_accepted_once(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            before = Decimal(conserved(client).credits_remaining)
            batch = usage_pb2.UsageBatch(
                batch_id=f"r-{round_}", events=[event(f"again-{round_}-{i}", 1) for i in range(5)]
            )

            def resend(t: TariffClient, batch: usage_pb2.UsageBatch = batch) -> Message:
                answers = list(t.usage.IngestUsage(iter([batch] * 6)))
                assert sum(a.accepted for a in answers) <= 5
                return usage_pb2.IngestAck(accepted=sum(a.accepted for a in answers), duplicates=len(answers))

            answers = race(server, [resend] * CALLERS)
            assert sum(a.accepted for a in acks(answers)) == 5, answers
            assert all(a.duplicates == 6 for a in acks(answers)), answers
            assert before - Decimal(conserved(client).credits_remaining) == 5


def test_a_release_racing_the_usage_settling_its_hold_gives_back_or_settles_never_both(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS * 2):
            reservation_id = f"rel-{round_}"
            answer = client.balance.Authorize(hold_request(reservation_id, 4))
            assert answer.allowed
            before = conserved(client)
            release = lambda t, r=reservation_id: t.balance.ReleaseReservation(  # noqa: E731
                balance_pb2.ReleaseReservationRequest(customer_id=CUSTOMER, reservation_id=r)
            )
            settle = usage_pb2.UsageBatch(events=[event(f"rel-{round_}", 2, reservation_id=reservation_id)])
            answers = race(server, [*[release] * (CALLERS - 1), by_unary(settle)])
            ack = answers[-1]
            assert isinstance(ack, usage_pb2.IngestAck) and ack.accepted == 1, ack
            after = conserved(client)
            assert Decimal(after.credits_held) == Decimal(before.credits_held) - 4, after
            assert Decimal(before.credits_remaining) - Decimal(after.credits_remaining) == 2
            releases = answers[:-1]
            if [n.reason for n in ack.notices] == [usage_pb2.NOTICE_RESERVATION_RELEASED]:
                for r in releases:
                    assert isinstance(r, balance_pb2.ReleaseReservationResponse), releases
                    assert Decimal(r.released_amount) == 4, releases
            else:
                assert list(ack.notices) == [], ack
                released = [r for r in releases if isinstance(r, balance_pb2.ReleaseReservationResponse)]
                refused = [r for r in releases if isinstance(r, FailedPrecondition)]
                assert len(released) + len(refused) == len(releases), releases
                assert all(Decimal(r.released_amount) == 4 for r in released), releases


def test_one_reservation_id_twice_in_messages_at_once_holds_once(server: ServerProcess) -> None:
    with server.client() as client:
        for round_ in range(ROUNDS):
            before = held(client)
            same = hold_request(f"twice-{round_}", 2)
            other = hold_request(f"twice-{round_}", 3)

            def send(t: TariffClient, same: Any = same, other: Any = other) -> Message:
                (result,) = list(
                    t.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[same, other, same])]))
                )
                found: Message = result
                return found

            answers = race(server, [send] * CALLERS)
            for result in answers:
                assert isinstance(result, balance_pb2.AuthorizeBatchResult), result
                first, clash, again = result.responses
                assert (first.allowed, clash.reason, again.allowed) == (True, "RESERVATION_CONFLICT", True), result
                assert first.reservation_id == again.reservation_id == f"twice-{round_}", result
            assert held(client) == before + 2


@pytest.mark.parametrize("snapshots", [(), ("--snapshot-every", "3", "--snapshot-journal-factor", "0")])
def test_streams_acked_at_once_before_a_kill_9_lose_nothing_they_acked(
    server_factory: ServerFactory, snapshots: tuple[str, ...]
) -> None:
    """Also with a snapshot every few records, so that snapshots are taken between the racing groups."""
    server = server_factory(name="killed", extra_args=snapshots)
    with server.client() as client:
        setup(client)
    at_ms = now_ms() - 60_000

    def kept(transaction_id: str) -> usage_pb2.UsageEvent:
        sent = event(transaction_id, 1)
        sent.timestamp_ms = at_ms
        return sent

    batches = {
        (caller, b): usage_pb2.UsageBatch(
            batch_id=f"k-{caller}-{b}",
            # Every caller sends the other callers' batches too (a retry from another machine): duplicates race.
            events=[kept(f"k-{(caller + b) % 3}-{b}-{i}") for i in range(10)],
        )
        for caller in range(6)
        for b in range(60)
    }
    acked: set[str] = set()  # transaction ids an ack accepted or counted a duplicate
    lock = threading.Lock()
    killed = threading.Event()
    failed: list[BaseException] = []

    def stream(caller: int) -> None:
        try:
            with server.client() as client:
                sent = [batches[(caller, b)] for b in range(60)]
                for batch, ack in zip(sent, client.usage.IngestUsage(iter(sent)), strict=False):
                    with lock:
                        # Accepted or counted a duplicate: either way the ack says the event is kept.
                        assert ack.accepted + ack.duplicates == len(batch.events), ack
                        acked.update(e.transaction_id for e in batch.events)
                        if len(acked) >= 200:
                            killed.set()
        except TariffError:
            pass  # the server was killed under it
        except BaseException as exc:  # an ack that broke the contract: failed in the test's thread below
            failed.append(exc)

    threads = [threading.Thread(target=stream, args=(caller,)) for caller in range(6)]
    for thread in threads:
        thread.start()
    killed.wait(timeout=60)
    server.kill9()
    for thread in threads:
        thread.join()
    assert failed == []
    server.restart()
    with server.client() as client:
        for batch in batches.values():
            ack = client.usage.IngestUsageBatch(batch)
            assert ack.accepted + ack.duplicates == len(batch.events), ack
        # Each accepted event's id resent now is a duplicate of what was kept: nothing acked was lost.
        for transaction_id in acked:
            ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[kept(transaction_id)]))
            assert (ack.accepted, ack.duplicates) == (0, 1), (transaction_id, ack)
        distinct = {e.transaction_id for batch in batches.values() for e in batch.events}
        assert Decimal(conserved(client).period_charges) == len(distinct)


def test_usage_at_once_fires_each_alert_once_and_one_top_up_alert_per_top_up(server: ServerProcess) -> None:
    policy = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="20", price_per_credit="0.5", max_per_period=2)
    customer_id = "alerted"
    with server.client() as client:
        blocked_customer(client, customer_id, "10")
        client.contracts.SetTopUpPolicy(
            contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{customer_id}-c", top_up=policy)
        )
        rules = [
            (alerts_pb2.LOW_BALANCE, "5"),
            (alerts_pb2.CREDITS_EXHAUSTED, ""),
            (alerts_pb2.SPEND_THRESHOLD, "20"),
            (alerts_pb2.TOP_UP_EXECUTED, ""),
        ]
        for type_, threshold in rules:
            client.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(customer_id=customer_id, type=type_, threshold=threshold)
            )
        # The last alert: once it is read, every alert the race fired has been.
        client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id=OTHER, type=alerts_pb2.CREDITS_EXHAUSTED))
    # Each event charges 6: available 10 -> 4 (top-up to 20), 14, 8, 2 (top-up to 20), 14, 8, 2 (low), -4 (none
    # left), whatever the order the batches apply in.
    sends = [
        by_unary(usage_pb2.UsageBatch(events=[event(f"al-{i}", 6, customer_id=customer_id)])) for i in range(CALLERS)
    ]
    assert sum(a.accepted for a in acks(race(server, sends))) == CALLERS
    with server.client() as client:
        client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[event("last", 1000, customer_id=OTHER)]))
        fired: list[str] = []
        for alert in client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=60):
            if alert.customer_id == OTHER:
                break
            fired.append(alerts_pb2.AlertType.Name(alert.type))
        assert sorted(fired) == sorted(
            ["TOP_UP_EXECUTED", "TOP_UP_EXECUTED", "SPEND_THRESHOLD", "LOW_BALANCE", "CREDITS_EXHAUSTED"]
        ), fired
        conserved(client, customer_id)


# ---------------------------------------------------------------------------------------------
# A hold's TTL against the server's clock driver


def test_a_hold_past_its_ttl_is_expired_for_the_release_and_the_event_that_come_after_it(
    server: ServerProcess,
) -> None:
    """The clock driver looks every 50 ms; a release or an event applied after the hold's TTL but before the
    driver's AdvanceClock released or settled it (answering a released amount, or no notice) where balance.proto
    and usage.proto say it expired at its TTL: FAILED_PRECONDITION, NOTICE_RESERVATION_EXPIRED."""
    with server.client() as client:
        for round_ in range(12):
            request = hold_request(f"ttl-{round_}", 1)
            request.reservation_ttl.CopyFrom(Duration(nanos=1_000_000))  # 1 ms
            assert client.balance.Authorize(request).allowed
            time.sleep(0.002)  # the TTL has run out, by any clock, before the next call leaves
            if round_ % 2:
                with pytest.raises(FailedPrecondition, match="already expired"):
                    client.balance.ReleaseReservation(
                        balance_pb2.ReleaseReservationRequest(customer_id=CUSTOMER, reservation_id=f"ttl-{round_}")
                    )
            else:
                settle = event(f"ttl-{round_}", 1, reservation_id=f"ttl-{round_}")
                ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[settle]))
                assert [n.reason for n in ack.notices] == [usage_pb2.NOTICE_RESERVATION_EXPIRED], ack
            assert Decimal(conserved(client).credits_held) == 0
