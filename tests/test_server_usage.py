"""Usage ingestion and balances against a real demo server (`tariff serve --demo`, tests/serverproc.py).

The demo catalogue (server/demo.py): product `ai_action` (COUNT, one per event) priced in credits on rate card
`ai-credits` v1, effective from the start of the current month, with these parameters and rates:

    summary_base 1, enrichment_base 0.5, gpt4_factor 2.5, mini_factor 0.5, complex_factor 2,
    crm_surcharge 0, web_surcharge 0.25

    summary  gpt-4       complex  summary_base * gpt4_factor * complex_factor + crm_surcharge = 1*2.5*2+0 = 5
    summary  gpt-4       simple   summary_base * gpt4_factor                                  = 1*2.5     = 2.5
    summary  gpt-4o-mini complex  summary_base * mini_factor * complex_factor                 = 1*0.5*2   = 1
    summary  gpt-4o-mini simple   summary_base * mini_factor                                  = 1*0.5     = 0.5
    enrichment gpt-4              enrichment_base * gpt4_factor                               = 0.5*2.5   = 1.25
    enrichment gpt-4 (web)        enrichment_base * gpt4_factor + web_surcharge               = 1.25+0.25 = 1.5
    enrichment gpt-4o-mini        enrichment_base * mini_factor                               = 0.5*0.5   = 0.25
    anything else ("*")                                                                       = 1

Customer `acme`, contract `acme-2026` from the start of the current month, grant `acme-prepaid-50k`: 50,000
credits paid 45,000 USD, so revenue is recognised at 45000/50000 = 0.9 USD per credit drawn.
"""

from __future__ import annotations

import itertools
import math
import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import grpc
import pytest
from tariff import InvalidArgument, NotFound, ResourceExhausted, TariffClient, Usage, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess

ACME = "acme"
CONTRACT = "acme-2026"
GRANT = "acme-prepaid-50k"
EVENT_TYPE = "ai_action"
REJECT = usage_pb2.RejectReason


# ---------------------------------------------------------------------------------------------
# Helpers


def assert_amount(actual: str, expected: str) -> None:
    """A wire amount: numerically equal AND in the canonical text the hand computation gives."""
    assert Decimal(actual) == Decimal(expected), f"{actual!r} != {expected!r}"
    assert actual == expected, f"not canonical: {actual!r}, expected {expected!r}"


def act(
    txn: str,
    action: str,
    model: str = "",
    complexity: str = "",
    data_source: str = "crm",
    *,
    ts: int | None = None,
    customer: str = ACME,
    event_type: str = EVENT_TYPE,
    values: dict[str, float] | None = None,
) -> usage_pb2.UsageEvent:
    """One demo AI action (dimensions left empty are not sent)."""
    dims = {"action": action, "model": model, "complexity": complexity, "data_source": data_source}
    return usage_pb2.UsageEvent(
        transaction_id=txn,
        customer_id=customer,
        event_type=event_type,
        timestamp_ms=now_ms() - 1_000 if ts is None else ts,
        dimensions={k: v for k, v in dims.items() if v},
        values=values or {},
    )


class Bidi:
    """One IngestUsage bidi call driven in lockstep: send a batch, read its ack."""

    def __init__(self, client: TariffClient) -> None:
        self._requests: queue.Queue[usage_pb2.UsageBatch | None] = queue.Queue()
        self._responses: Iterator[usage_pb2.IngestAck] = client.usage.IngestUsage(iter(self._requests.get, None))

    def send(self, batch: usage_pb2.UsageBatch) -> usage_pb2.IngestAck:
        self._requests.put(batch)
        return next(self._responses)

    def close(self) -> None:
        """Half-closes the call and checks that the server ends it with no further ack."""
        self._requests.put(None)
        assert list(self._responses) == [], "no ack without a batch"

    def end_requests(self) -> None:
        self._requests.put(None)


def stream_one(client: TariffClient, batch: usage_pb2.UsageBatch) -> usage_pb2.IngestAck:
    stream = Bidi(client)
    try:
        ack = stream.send(batch)
    except BaseException:
        stream.end_requests()  # releases the request-iterator thread
        raise
    stream.close()
    return ack


def ingest(client: TariffClient, batch: usage_pb2.UsageBatch, transport: str) -> usage_pb2.IngestAck:
    if transport == "stream":
        return stream_one(client, batch)
    assert transport == "unary"
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(batch)
    return ack


def money(balance: balance_pb2.Balance) -> tuple[object, ...]:
    """Everything about a balance that money depends on (as_of_seq moves with every journaled batch)."""
    return (
        balance.credits_remaining,
        balance.credits_available,
        balance.credits_held,
        balance.period_charges,
        balance.overage_amount,
        balance.overage_due,
        tuple((g.grant_id, g.drawn, g.remaining, g.expired, g.recognized_revenue) for g in balance.grants),
    )


def the_grant(balance: balance_pb2.Balance) -> balance_pb2.GrantBalance:
    (grant,) = balance.grants
    assert grant.grant_id == GRANT
    return grant


def assert_acme_drew(balance: balance_pb2.Balance, drawn: str, remaining: str, revenue: str) -> None:
    """acme's one grant has drawn `drawn`; nothing held, no overage."""
    assert balance.customer_id == ACME
    assert balance.pricing_unit == "credits"
    assert_amount(balance.credits_remaining, remaining)
    assert_amount(balance.credits_available, remaining)
    assert_amount(balance.credits_held, "0")
    assert_amount(balance.period_charges, drawn)
    assert_amount(balance.overage_amount, "0")
    assert_amount(balance.overage_due, "0")
    grant = the_grant(balance)
    assert_amount(grant.amount, "50000")
    assert_amount(grant.drawn, drawn)
    assert_amount(grant.remaining, remaining)
    assert_amount(grant.expired, "0")
    assert_amount(grant.recognized_revenue, revenue)


def contract_start_ms(client: TariffClient) -> int:
    contract: contracts_pb2.Contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT))
    start = contract.starting_at
    return int(start.seconds * 1000 + start.nanos // 1_000_000)


# ---------------------------------------------------------------------------------------------
# The credit-pack flow


def test_demo_credit_pack_flow_streams_batches_and_balances_follow_exactly(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        start = client.get_balance(ACME)
        assert_acme_drew(start, drawn="0", remaining="50000", revenue="0")
        batches = [
            usage_pb2.UsageBatch(
                batch_id="b-1",
                events=[
                    act("flow-1", "summary", "gpt-4", "complex"),  # 5
                    act("flow-2", "summary", "gpt-4", "simple"),  # 2.5
                    act("flow-3", "summary", "gpt-4o-mini", "complex"),  # 1
                    act("flow-4", "summary", "gpt-4o-mini", "simple"),  # 0.5
                ],
            ),
            usage_pb2.UsageBatch(
                batch_id="b-2",
                events=[
                    act("flow-5", "enrichment", "gpt-4", data_source="crm"),  # 1.25
                    act("flow-6", "enrichment", "gpt-4", data_source="web"),  # 1.5
                    act("flow-7", "enrichment", "gpt-4o-mini"),  # 0.25
                    act("flow-8", "translation", "gpt-4", "complex"),  # no specific rate: "*" = 1
                    act("flow-9", "summary", "gpt-4"),  # no complexity: only "*" matches = 1
                ],
            ),
            usage_pb2.UsageBatch(batch_id="b-3", events=[act("flow-10", "summary", "gpt-4", "complex")]),  # 5
        ]
        # Cumulative draw after each batch, and revenue = drawn x 45000/50000 = drawn x 0.9:
        #   b-1: 5 + 2.5 + 1 + 0.5             = 9    -> remaining 50000 - 9  = 49991, revenue 9 x 0.9  = 8.1
        #   b-2: 9 + 1.25 + 1.5 + 0.25 + 1 + 1 = 14   -> remaining 50000 - 14 = 49986, revenue 14 x 0.9 = 12.6
        #   b-3: 14 + 5                        = 19   -> remaining 50000 - 19 = 49981, revenue 19 x 0.9 = 17.1
        expected = [("9", "49991", "8.1"), ("14", "49986", "12.6"), ("19", "49981", "17.1")]
        stream = Bidi(client)
        seqs = [start.as_of_seq]
        for batch, (drawn, remaining, revenue) in zip(batches, expected, strict=True):
            ack = stream.send(batch)
            assert ack.batch_id == batch.batch_id
            assert ack.accepted == len(batch.events)
            assert ack.duplicates == 0
            assert list(ack.rejected) == []
            assert ack.journal_seq > seqs[-1], f"journal_seq must increase: {seqs} then {ack.journal_seq}"
            seqs.append(ack.journal_seq)
            # The balance moves as soon as the batch is acknowledged.
            balance = client.get_balance(ACME)
            assert_acme_drew(balance, drawn=drawn, remaining=remaining, revenue=revenue)
            assert balance.as_of_seq == ack.journal_seq
        stream.close()

        final = client.get_balance(ACME)
        assert_acme_drew(final, drawn="19", remaining="49981", revenue="17.1")
        # Revenue is recognised at the price paid per credit: 19 credits x 45000 / 50000.
        assert Decimal(the_grant(final).recognized_revenue) == Decimal(19) * Decimal(45000) / Decimal(50000)
        assert final.period_start.seconds * 1000 == contract_start_ms(client)


# ---------------------------------------------------------------------------------------------
# Duplicates and conflicts


@pytest.mark.parametrize("transport", ["stream", "unary"])
def test_identical_resend_is_all_duplicates_and_changes_nothing(demo_server: ServerProcess, transport: str) -> None:
    with demo_server.client() as client:
        batch = usage_pb2.UsageBatch(
            batch_id="dup-1",
            events=[
                act("dup-a", "summary", "gpt-4", "complex"),  # 5
                act("dup-b", "enrichment", "gpt-4", data_source="web"),  # 1.5
                act("dup-c", "summary", "gpt-4o-mini", "simple"),  # 0.5
            ],
        )
        first = ingest(client, batch, transport)
        assert (first.accepted, first.duplicates, list(first.rejected)) == (3, 0, [])
        after_first = client.get_balance(ACME)
        # 5 + 1.5 + 0.5 = 7 drawn; 50000 - 7 = 49993; revenue 7 x 0.9 = 6.3
        assert_acme_drew(after_first, drawn="7", remaining="49993", revenue="6.3")

        again = ingest(client, batch, transport)
        assert again.batch_id == "dup-1"
        assert (again.accepted, again.duplicates, list(again.rejected)) == (0, 3, [])
        assert money(client.get_balance(ACME)) == money(after_first)

        # The same transaction id twice in one batch: the second is a duplicate of the first.
        once = act("dup-d", "translation")  # one event sent twice: same timestamp, same content
        twice = usage_pb2.UsageBatch(batch_id="dup-2", events=[once, once])
        ack = ingest(client, twice, transport)
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (1, 1, [])
        # one "*" action more: 7 + 1 = 8; 50000 - 8 = 49992; revenue 8 x 0.9 = 7.2
        assert_acme_drew(client.get_balance(ACME), drawn="8", remaining="49992", revenue="7.2")


def test_identical_resend_after_restart_and_after_kill9_is_still_duplicates(demo_server: ServerProcess) -> None:
    batch = usage_pb2.UsageBatch(
        batch_id="restart-1",
        events=[
            act("rs-a", "summary", "gpt-4", "simple"),  # 2.5
            act("rs-b", "enrichment", "gpt-4o-mini"),  # 0.25
        ],
    )
    with demo_server.client() as client:
        ack = stream_one(client, batch)
        assert (ack.accepted, ack.duplicates) == (2, 0)
        before = client.get_balance(ACME)
    # 2.5 + 0.25 = 2.75; 50000 - 2.75 = 49997.25; revenue 2.75 x 0.9 = 2.475
    assert_acme_drew(before, drawn="2.75", remaining="49997.25", revenue="2.475")

    demo_server.restart()  # SIGTERM, start again on the same data
    with demo_server.client() as client:
        assert money(client.get_balance(ACME)) == money(before)
        again = stream_one(client, batch)
        assert (again.accepted, again.duplicates, list(again.rejected)) == (0, 2, [])
        # A different payload under an accepted id is still a conflict after the restart.
        conflict = stream_one(
            client, usage_pb2.UsageBatch(events=[act("rs-a", "summary", "gpt-4", "complex")])
        )  # was "simple"
        assert conflict.accepted == 0
        assert [(r.index, r.transaction_id, r.reason) for r in conflict.rejected] == [
            (0, "rs-a", REJECT.DUPLICATE_CONFLICT)
        ]
        assert money(client.get_balance(ACME)) == money(before)

    demo_server.kill9()  # a crash this time: no snapshot written on the way out
    demo_server.start()
    with demo_server.client() as client:
        assert money(client.get_balance(ACME)) == money(before)
        again = client.ingest_batch([Usage.from_proto(e) for e in batch.events], batch_id="restart-2")
        assert (again.accepted, again.duplicates, list(again.rejected)) == (0, 2, [])
        assert money(client.get_balance(ACME)) == money(before)


def test_conflicting_resend_is_rejected_duplicate_conflict_and_changes_nothing(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        original_a = act("cf-a", "summary", "gpt-4", "complex")
        original_b = act("cf-b", "summary", "gpt-4o-mini", "simple")
        ack = stream_one(client, usage_pb2.UsageBatch(events=[original_a, original_b]))
        assert (ack.accepted, ack.duplicates) == (2, 0)
        before = client.get_balance(ACME)
        # 5 + 0.5 = 5.5; 50000 - 5.5 = 49994.5; revenue 5.5 x 0.9 = 4.95
        assert_acme_drew(before, drawn="5.5", remaining="49994.5", revenue="4.95")

        changed_b = usage_pb2.UsageEvent()
        changed_b.CopyFrom(original_b)
        changed_b.dimensions["complexity"] = "complex"  # same id, one dimension changed (would cost 1, not 0.5)
        ack = stream_one(client, usage_pb2.UsageBatch(batch_id="cf-2", events=[changed_b]))
        assert ack.batch_id == "cf-2"
        assert (ack.accepted, ack.duplicates) == (0, 0)
        assert len(ack.rejected) == 1
        rejection = ack.rejected[0]
        assert (rejection.index, rejection.transaction_id, rejection.reason) == (0, "cf-b", REJECT.DUPLICATE_CONFLICT)
        assert rejection.message
        assert money(client.get_balance(ACME)) == money(before)

        # Behind an identical resend (a duplicate), the conflict is named by its own index; only the
        # timestamp differs this time.
        moved_a = usage_pb2.UsageEvent()
        moved_a.CopyFrom(original_a)
        moved_a.timestamp_ms -= 60_000
        ack = client.ingest_batch([original_b, moved_a], batch_id="cf-3")
        assert ack.batch_id == "cf-3"
        assert (ack.accepted, ack.duplicates) == (0, 1)
        assert [(r.index, r.transaction_id, r.reason) for r in ack.rejected] == [(1, "cf-a", REJECT.DUPLICATE_CONFLICT)]
        assert money(client.get_balance(ACME)) == money(before)

        # Inside one batch: a new id, then the same id with other content.
        fresh = act("cf-c", "translation")  # "*": 1
        fresh_changed = usage_pb2.UsageEvent()
        fresh_changed.CopyFrom(fresh)
        fresh_changed.dimensions["action"] = "summary"
        ack = client.ingest_batch([fresh, fresh_changed], batch_id="cf-4")
        assert (ack.accepted, ack.duplicates) == (1, 0)
        assert [(r.index, r.transaction_id, r.reason) for r in ack.rejected] == [(1, "cf-c", REJECT.DUPLICATE_CONFLICT)]
        # 5.5 + 1 = 6.5; 50000 - 6.5 = 49993.5; revenue 6.5 x 0.9 = 5.85
        assert_acme_drew(client.get_balance(ACME), drawn="6.5", remaining="49993.5", revenue="5.85")


# ---------------------------------------------------------------------------------------------
# Bad events in a batch


@pytest.mark.parametrize("transport", ["stream", "unary"])
def test_bad_events_are_rejected_by_index_and_reason_while_good_ones_are_accepted(
    demo_server: ServerProcess, transport: str
) -> None:
    with demo_server.client() as client:
        start_ms = contract_start_ms(client)
        now = now_ms()
        before = client.get_balance(ACME)
        events = [
            act("mix-0", "summary", "gpt-4", "complex"),  # 0 good: 5
            act("mix-1", "summary", "gpt-4", "complex", customer=""),  # 1 no customer_id
            act("mix-2", "summary", "gpt-4", "complex", customer="nobody"),  # 2 unknown customer
            act("mix-3", "summary", "gpt-4", "complex", values={"tokens": math.nan}),  # 3 NaN value
            act("mix-4", "summary", "gpt-4o-mini", "simple"),  # 4 good: 0.5
            act("mix-5", "summary", "gpt-4", "complex", values={"tokens": -1.0}),  # 5 negative value
            act("mix-6", "summary", "gpt-4", "complex", values={"tokens": math.inf}),  # 6 +inf value
            act("mix-7", "summary", "gpt-4", "complex", ts=now + 3_600_000),  # 7 an hour ahead (skew is 5 min)
            act("", "summary", "gpt-4", "complex"),  # 8 no transaction_id
            act("mix-9", "summary", "gpt-4", "complex", ts=start_ms - 1),  # 9 1 ms before the contract starts
            act("mix-10", "enrichment", "gpt-4", data_source="web"),  # 10 good: 1.5
            act("mix-11", "page_view", event_type="page_view"),  # 11 good: feeds no product, charges 0
            act("mix-12", "summary", "gpt-4", "simple", ts=now + 60_000),  # 12 good: 1 min ahead is within skew: 2.5
            act("mix-13", "summary", "gpt-4", "complex", event_type=""),  # 13 no event_type
            act("mix-14", "summary", "gpt-4", "complex", ts=0),  # 14 no timestamp
            act("mix-15", "x" * 257),  # 15 a dimension value over 256 bytes
            act("mix-16", "summary", values={f"v{i}": 1.0 for i in range(65)}),  # 16 over 64 values
            act("mix-17", "summary", "gpt-4o-mini", "simple", ts=start_ms),  # 17 good: the contract's first ms: 0.5
        ]
        expected_rejections = {
            1: ("mix-1", REJECT.INVALID_EVENT),
            2: ("mix-2", REJECT.UNKNOWN_CUSTOMER),
            3: ("mix-3", REJECT.INVALID_EVENT),
            5: ("mix-5", REJECT.INVALID_EVENT),
            6: ("mix-6", REJECT.INVALID_EVENT),
            7: ("mix-7", REJECT.TIMESTAMP_OUT_OF_RANGE),
            8: ("", REJECT.INVALID_EVENT),
            9: ("mix-9", REJECT.NO_ACTIVE_CONTRACT),
            13: ("mix-13", REJECT.INVALID_EVENT),
            14: ("mix-14", REJECT.INVALID_EVENT),
            15: ("mix-15", REJECT.INVALID_EVENT),
            16: ("mix-16", REJECT.INVALID_EVENT),
        }
        ack = ingest(client, usage_pb2.UsageBatch(batch_id="mixed", events=events), transport)
        assert ack.batch_id == "mixed"
        assert ack.journal_seq > before.as_of_seq
        assert {r.index: (r.transaction_id, r.reason) for r in ack.rejected} == expected_rejections
        assert len(ack.rejected) == len(expected_rejections), "each bad event is named once"
        assert all(r.message for r in ack.rejected), [r for r in ack.rejected if not r.message]
        assert ack.accepted == 6  # indexes 0, 4, 10, 11, 12, 17
        assert ack.duplicates == 0
        assert ack.accepted + ack.duplicates + len(ack.rejected) == len(events)

        # Only the good ones drew: 5 + 0.5 + 1.5 + 0 + 2.5 + 0.5 = 10; 50000 - 10 = 49990; revenue 10 x 0.9 = 9
        assert_acme_drew(client.get_balance(ACME), drawn="10", remaining="49990", revenue="9")

        # A rejected event left no trace in the dedupe index: corrected, under the same id, it is accepted.
        fixed = act("mix-7", "summary", "gpt-4", "complex")  # 5
        ack = ingest(client, usage_pb2.UsageBatch(events=[fixed]), transport)
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (1, 0, [])
        # 10 + 5 = 15; 50000 - 15 = 49985; revenue 15 x 0.9 = 13.5
        assert_acme_drew(client.get_balance(ACME), drawn="15", remaining="49985", revenue="13.5")


# ---------------------------------------------------------------------------------------------
# Authorize

# (action, model, complexity, data_source) -> hand-computed price (see the module docstring)
PRICED = [
    (("summary", "gpt-4", "complex", "crm"), "5"),
    (("summary", "gpt-4", "simple", "crm"), "2.5"),
    (("summary", "gpt-4o-mini", "complex", "crm"), "1"),
    (("summary", "gpt-4o-mini", "simple", "crm"), "0.5"),
    (("enrichment", "gpt-4", "", "crm"), "1.25"),
    (("enrichment", "gpt-4", "", "web"), "1.5"),
    (("enrichment", "gpt-4o-mini", "", "web"), "0.25"),
    (("translation", "gpt-4", "complex", "crm"), "1"),
]


def dims_of(action: str, model: str, complexity: str, data_source: str) -> dict[str, str]:
    dims = {"action": action, "model": model, "complexity": complexity, "data_source": data_source}
    return {k: v for k, v in dims.items() if v}


def test_authorize_estimates_exactly_what_ingesting_the_event_then_draws(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        for i, ((action, model, complexity, source), price) in enumerate(PRICED):
            before = client.get_balance(ACME)
            decision = client.authorize(ACME, EVENT_TYPE, dims_of(action, model, complexity, source), {}, f"req-{i}")
            assert decision.request_id == f"req-{i}"
            assert decision.allowed
            assert decision.reason == "OK"
            assert_amount(decision.estimated_cost, price)
            assert_amount(decision.credits_available, before.credits_available)
            # Authorize holds nothing: the balance did not move.
            assert money(client.get_balance(ACME)) == money(before)

            ack = client.ingest_batch([act(f"auth-{i}", action, model, complexity, source)])
            assert ack.accepted == 1
            after = client.get_balance(ACME)
            drawn = Decimal(before.credits_remaining) - Decimal(after.credits_remaining)
            assert drawn == Decimal(decision.estimated_cost), (action, model, complexity, source)
        # 5 + 2.5 + 1 + 0.5 + 1.25 + 1.5 + 0.25 + 1 = 13; 50000 - 13 = 49987; revenue 13 x 0.9 = 11.7
        assert_acme_drew(client.get_balance(ACME), drawn="13", remaining="49987", revenue="11.7")


def test_authorize_unknown_customer_is_not_found(demo_server: ServerProcess) -> None:
    with demo_server.client() as client, pytest.raises(NotFound) as caught:
        client.authorize("nobody", EVENT_TYPE, {"action": "summary"}, {}, "req-x")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "nobody" in caught.value.details


def test_authorize_stream_answers_every_request_with_its_request_id(demo_server: ServerProcess) -> None:
    requests = []
    expected: dict[str, tuple[bool, str, str]] = {}  # request_id -> (allowed, reason, estimated_cost)
    for i in range(240):
        (action, model, complexity, source), price = PRICED[i % len(PRICED)]
        request_id = f"gw-{i:03d}"
        customer = "nobody" if i % 60 == 59 else ACME  # every 60th asks for an unknown customer: answered in-band
        requests.append(
            balance_pb2.AuthorizeRequest(
                request_id=request_id,
                customer_id=customer,
                event_type=EVENT_TYPE,
                dimensions=dims_of(action, model, complexity, source),
            )
        )
        expected[request_id] = (True, "OK", price) if customer == ACME else (False, "UNKNOWN_CUSTOMER", "0")
    with demo_server.client() as client:
        before = client.get_balance(ACME)
        answers = list(client.balance.AuthorizeStream(iter(requests)))
        assert len(answers) == len(requests)
        got = {a.request_id: (a.allowed, a.reason, a.estimated_cost) for a in answers}
        assert got == expected
        for answer in answers:
            assert_amount(answer.estimated_cost, expected[answer.request_id][2])
        assert money(client.get_balance(ACME)) == money(before)

        # request_id is what correlates answers: a request without one ends the stream, INVALID_ARGUMENT.
        with pytest.raises(InvalidArgument):
            list(client.balance.AuthorizeStream(iter([requests[0], balance_pb2.AuthorizeRequest(customer_id=ACME)])))


# ---------------------------------------------------------------------------------------------
# Batch size limit


def test_batch_over_10000_events_is_resource_exhausted_and_ingests_nothing(demo_server: ServerProcess) -> None:
    cheap = {"action": "summary", "model": "gpt-4o-mini", "complexity": "simple"}  # 0.5 each
    ts = now_ms() - 1_000
    oversized = usage_pb2.UsageBatch(
        batch_id="too-big",
        events=[
            usage_pb2.UsageEvent(
                transaction_id=f"big-{i}", customer_id=ACME, event_type=EVENT_TYPE, timestamp_ms=ts, dimensions=cheap
            )
            for i in range(10_001)
        ],
    )
    with demo_server.client() as client:
        before = client.get_balance(ACME)

        with pytest.raises(ResourceExhausted) as caught:
            client.ingest_batch(oversized.events, batch_id="too-big")
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "10000" in caught.value.details.replace(",", "")

        with pytest.raises(ResourceExhausted):
            stream_one(client, oversized)

        after = client.get_balance(ACME)
        assert money(after) == money(before)
        assert after.as_of_seq == before.as_of_seq, "nothing was journaled"
        # Not one event of it is known: the first, sent alone, is new.
        ack = client.ingest_batch([oversized.events[0]])
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (1, 0, [])

        # Exactly 10,000 is allowed.
        at_limit = usage_pb2.UsageBatch(batch_id="at-limit")
        for i in range(10_000):
            event = at_limit.events.add()
            event.CopyFrom(oversized.events[0])
            event.transaction_id = f"limit-{i}"
        ack = stream_one(client, at_limit)
        assert (ack.batch_id, ack.accepted, ack.duplicates, list(ack.rejected)) == ("at-limit", 10_000, 0, [])
        # 0.5 + 10000 x 0.5 = 5000.5; 50000 - 5000.5 = 44999.5; revenue 5000.5 x 0.9 = 4500.45
        assert_acme_drew(client.get_balance(ACME), drawn="5000.5", remaining="44999.5", revenue="4500.45")


def test_message_over_the_size_limit_is_resource_exhausted_and_ingests_nothing(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, extra_args=["--message-mb-max", "1"], name="small-messages")
    ts = now_ms() - 1_000
    big = usage_pb2.UsageBatch(
        batch_id="over-1mib",
        events=[act(f"mb-{i}", "summary", "gpt-4o-mini", "simple", ts=ts) for i in range(9_000)],
    )
    assert big.ByteSize() > 1024 * 1024
    with server.client() as client:
        before = client.get_balance(ACME)
        with pytest.raises(ResourceExhausted):
            client.ingest_batch(big.events, batch_id=big.batch_id)
        with pytest.raises(ResourceExhausted):
            stream_one(client, big)
        after = client.get_balance(ACME)
        assert money(after) == money(before)
        assert after.as_of_seq == before.as_of_seq


# ---------------------------------------------------------------------------------------------
# Pipelining and concurrency


def test_pipelined_stream_acks_every_batch_once_in_order(demo_server: ServerProcess) -> None:
    ts = now_ms() - 1_000
    batches = [
        usage_pb2.UsageBatch(
            batch_id=f"p-{i:02d}",
            events=[
                act(f"p-{i}-{j}", "summary", *(("gpt-4", "complex") if j % 2 else ("gpt-4o-mini", "simple")), ts=ts)
                for j in range(10)
            ],
        )
        for i in range(60)  # well over the server's 16 batches in flight per stream
    ]
    with demo_server.client() as client:
        before = client.get_balance(ACME)
        acks = list(client.usage.IngestUsage(iter(batches)))  # all written without waiting for acks
        assert [a.batch_id for a in acks] == [b.batch_id for b in batches]
        assert all((a.accepted, a.duplicates, len(a.rejected)) == (10, 0, 0) for a in acks)
        seqs = [a.journal_seq for a in acks]
        assert all(earlier < later for earlier, later in itertools.pairwise(seqs)), seqs
        assert seqs[0] > before.as_of_seq
        # each batch: 5 x 5 + 5 x 0.5 = 27.5; 60 batches: 1650; 50000 - 1650 = 48350; revenue 1650 x 0.9 = 1485
        assert_acme_drew(client.get_balance(ACME), drawn="1650", remaining="48350", revenue="1485")


def test_the_same_batches_on_concurrent_streams_are_accepted_exactly_once(demo_server: ServerProcess) -> None:
    ts = now_ms() - 1_000
    batches = [
        usage_pb2.UsageBatch(
            batch_id=f"cc-{i}",
            events=[act(f"cc-{i}-{j}", "summary", "gpt-4o-mini", "simple", ts=ts) for j in range(25)],
        )
        for i in range(20)
    ]
    streams = 4
    with demo_server.client() as client, ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda _: list(client.usage.IngestUsage(iter(batches))), range(streams)))
        for acks in results:
            assert [a.batch_id for a in acks] == [b.batch_id for b in batches]
            assert all(a.accepted + a.duplicates == 25 and not a.rejected for a in acks)
        for i in range(len(batches)):
            assert sum(acks[i].accepted for acks in results) == 25, f"batch {i}: each event accepted once"
        assert sum(a.duplicates for acks in results for a in acks) == (streams - 1) * 500
        # 20 x 25 = 500 distinct events x 0.5 = 250; 50000 - 250 = 49750; revenue 250 x 0.9 = 225
        assert_acme_drew(client.get_balance(ACME), drawn="250", remaining="49750", revenue="225")
