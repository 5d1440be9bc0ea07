"""A second, independent acceptance audit of usage ingestion over the wire (usage.proto: IngestUsage and
IngestUsageBatch; README "What the server does today" (Usage, Times), "API keys", "Limits and backpressure",
"Invoices and revenue" (Closing); docs/architecture.md §5, §6 Quantities, §7, §8), against one real server for the
file, as a demanding billing user reads them. Every amount asserted is computed by hand from the documents.
tests/test_audit_usage_wire.py is the first round; this one goes past it: each documented limit on its own, the
ack's exact accounting, dedupe on every part of an event's content, empty batches and batch ids, the batch size
limit on both calls, a key restricted to one customer, late events and closed periods, COUNT, filters on two keys,
graduated tiers and one event feeding three products, the stream and the unary call answering alike, and an ack
surviving kill -9.

Catalogue (rate card `card`, pricing unit credits, version 1 in force from 2024-01-01):

    product      event type  aggregation   value key  filters               price
    sum_n        s           SUM           n                                1 a unit
    calls        c           COUNT                                          2 a unit (an event)
    grad         g           SUM           n                                GRADUATED: up to 10 at 1, then 0.5
    gold_eu      f           SUM           n          region=eu, tier=gold  1 a unit
    m_sum        multi       SUM           n                                1 a unit
    m_count      multi       COUNT                                          3 a unit
    m_peak       multi       MAX           g                                5 a unit
    tokens       tok         SUM           n          (pricing dimension model; a rate for model=small only)  1

The server runs with API keys (`ops-admin`, unrestricted admin; `mine-meter`, an ingest key restricted to customer
`mine`) and `--close-grace off`. Each test makes its own customers (`mine` and `yours`, made with the catalogue,
serve the restricted key's tests); a contract starts on the hour 5 hours ago
unless said otherwise, so the events of the last 5 hours are in its current period."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import charges, this_hour_ms, unit
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess
from tests.test_audit_usage_wire import event
from tests.test_server_auth import Keys

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
KEYS: dict[str, tuple[str, list[str] | None]] = {"ops-admin": ("admin", None), "mine-meter": ("ingest", ["mine"])}
REJECT = usage_pb2.RejectReason
Outcome = tuple[int, int, list[tuple[int, str, int]]]


def catalogue(client: TariffClient) -> None:
    products = [
        pricing_pb2.Product(id="sum_n", event_type="s", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(id="calls", event_type="c", aggregation=pricing_pb2.COUNT),
        pricing_pb2.Product(id="grad", event_type="g", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(
            id="gold_eu",
            event_type="f",
            aggregation=pricing_pb2.SUM,
            value_key="n",
            filters={"region": "eu", "tier": "gold"},
        ),
        pricing_pb2.Product(id="m_sum", event_type="multi", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(id="m_count", event_type="multi", aggregation=pricing_pb2.COUNT),
        pricing_pb2.Product(id="m_peak", event_type="multi", aggregation=pricing_pb2.MAX, value_key="g"),
        pricing_pb2.Product(
            id="tokens", event_type="tok", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["model"]
        ),
    ]
    for product in products:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    tiers = [pricing_pb2.Tier(up_to="10", unit_price="1"), pricing_pb2.Tier(unit_price="0.5")]
    rates = [
        unit("sum_n", "1"),
        unit("calls", "2"),
        pricing_pb2.Rate(product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers)),
        unit("gold_eu", "1"),
        unit("m_sum", "1"),
        unit("m_count", "3"),
        unit("m_peak", "5"),
        unit("tokens", "1", model="small"),
    ]
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root: Path = tmp_path_factory.mktemp("audit-usage2-keys")
    return Keys(root / "keys.json", KEYS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-usage2")
    process = ServerProcess(
        root / "data", extra_args=[*keys.args, "--close-grace", "off"], api_key=keys.key["ops-admin"]
    )
    process.start()
    try:
        with process.client() as admin:
            catalogue(admin)
            customer(admin, "mine")  # the customer of the restricted key
            customer(admin, "yours")
        yield process
    finally:
        process.stop()
        print(f"--- {process!r} (tail) ---\n{process.log_tail(40)}")


def customer(
    client: TariffClient, customer_id: str, *, starting_at_ms: int | None = None, credit: str = "", card: str = "card"
) -> int:
    """The customer, its contract `k-<id>` on `card` (from the hour 5 hours ago unless given), and a promotional
    grant of `credit` when given; returns the contract's start."""
    start_ms = this_hour_ms() - 5 * HOUR_MS if starting_at_ms is None else starting_at_ms
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id=card, starting_at=stamp(start_ms)
        )
    )
    if credit:
        grant = contracts_pb2.Grant(
            id=f"g-{customer_id}", contract_id=f"k-{customer_id}", kind=contracts_pb2.PROMOTIONAL, amount=credit
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return start_ms


def ingest(client: TariffClient, *events: usage_pb2.UsageEvent, batch_id: str = "b") -> usage_pb2.IngestAck:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id=batch_id, events=events))
    return ack


def outcome(ack: usage_pb2.IngestAck) -> Outcome:
    """(accepted, duplicates, [(index, transaction id, reason)]) of an ack."""
    return ack.accepted, ack.duplicates, [(r.index, r.transaction_id, r.reason) for r in ack.rejected]


def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    assert callable(call)
    try:
        call()
    except TariffError as e:
        return e.code, e.details
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    raise AssertionError("the call succeeded")


def test_each_documented_limit_refuses_only_its_event_with_its_reason_and_a_message_naming_the_field(
    server: ServerProcess,
) -> None:
    """usage.proto UsageEvent, docs/architecture.md §5 step 3 and §8: each event below breaks one rule (or sits
    exactly on its bound and is accepted). They travel in one batch, which rates every good event: the accepted
    ones carry n = 1, 2, 4, ..., so the period's charges (sum_n at 1 a unit) say exactly which were charged."""
    now = now_ms()
    at_ms = now - 1_000
    with server.client() as client:
        start_ms = customer(client, "limits")

        def s(transaction_id: str, n: float = 0.0, **fields: object) -> usage_pb2.UsageEvent:
            made = event(transaction_id, "limits", "s", at_ms, {"n": n})
            for name, value in fields.items():
                if name in ("dimensions", "values"):
                    getattr(made, name).clear()
                    getattr(made, name).update(value)
                else:
                    setattr(made, name, value)
            return made

        dims64 = {f"d{i:02}": "x" for i in range(64)}
        values64: dict[str, float] = {"n": 2.0, **{f"v{i:02}": 1.0 for i in range(63)}}
        future_ms = now + 360_000
        invalid, too_far = REJECT.INVALID_EVENT, REJECT.TIMESTAMP_OUT_OF_RANGE
        cases: list[tuple[usage_pb2.UsageEvent, tuple[int, str] | None]] = [
            (s("t" * 256, 1), None),  # a transaction id of exactly 256 bytes
            (s("u" * 257, 1), (invalid, "transaction_id is longer than 256 bytes")),
            (s("", 1), (invalid, "transaction_id is required")),
            (s("no-customer", 1, customer_id=""), (invalid, "customer_id is required")),
            (s("no-type", 1, event_type=""), (invalid, "event_type is required")),
            (s("no-time", 1, timestamp_ms=0), (invalid, "timestamp_ms is required")),
            (s("before-1970", 1, timestamp_ms=-5), (invalid, "timestamp_ms -5 must be positive")),
            (s("dims64", 2, dimensions=dims64), None),
            (s("dims65", 1, dimensions={**dims64, "d64": "x"}), (invalid, "dimensions: at most 64 entries")),
            (s("values64", values=values64), None),
            (s("values65", values={**values64, "v63": 1.0}), (invalid, "values: at most 64 entries")),
            (s("key256", 4, dimensions={"k" * 256: "x"}), None),
            (s("key257", 1, dimensions={"k" * 257: "x"}), (invalid, "dimensions['kkkk")),
            (s("text256", 8, dimensions={"city": "é" * 128}), None),  # 128 characters, 256 bytes of UTF-8
            (s("text258", 1, dimensions={"city": "é" * 129}), (invalid, "dimensions['city']")),
            (s("vkey257", values={"n": 1.0, "v" * 257: 1.0}), (invalid, "values['vvvv")),
            (s("nan", math.nan), (invalid, "values['n'] is nan: must be a finite number")),
            (s("inf", math.inf), (invalid, "values['n'] is inf: must be a finite number")),
            (s("-inf", -math.inf), (invalid, "values['n'] is -inf: must be a finite number")),
            (s("negative", -1.0), (invalid, "values['n'] is -1.0: must not be negative")),
            (s("nan-unread", values={"n": 1.0, "x": math.nan}), (invalid, "values['x'] is nan")),
            (s("minus-zero", -0.0), None),  # -0.0 is zero, not negative
            (s("e15", 1e15), (invalid, "values['n'] is 1000000000000000.0: must be below 1e+15")),
            (s("places19", 1.5e-18), (invalid, "values['n'] is 1.5e-18: more than 18 decimal places")),
            (s("subnormal", 5e-324), (invalid, "values['n'] is 5e-324: more than 18 decimal places")),
            (s("no-n", values={"m": 1.0}), (invalid, "values['n'] is required by product 'sum_n'")),
            (s("soon", 16, timestamp_ms=now + 240_000), None),  # within the 5 minutes ahead
            (s("later", 1, timestamp_ms=future_ms), (too_far, f"timestamp_ms {future_ms} is more than 300 s")),
            (s("before-start", 1, timestamp_ms=start_ms - 1), (REJECT.NO_ACTIVE_CONTRACT, "no contract covering")),
            (s("nobody", 1, customer_id="nobody"), (REJECT.UNKNOWN_CUSTOMER, "customer 'nobody' does not exist")),
            (s("not-an-id", 1, customer_id="not an id!"), (REJECT.UNKNOWN_CUSTOMER, "customer_id: 'not an id!'")),
            (s("last", 32), None),
        ]
        ack = ingest(client, *(e for e, _ in cases))
        expected = [(i, e.transaction_id, why[0]) for i, (e, why) in enumerate(cases) if why is not None]
        assert outcome(ack) == (8, 0, expected)
        for rejection, (_, why) in zip(ack.rejected, [c for c in cases if c[1] is not None], strict=True):
            assert why is not None and why[1] in rejection.message, (rejection.transaction_id, rejection.message)
        # 1 + 2 + 2 (values64's n) ... : t*256 1, dims64 2, values64 2, key256 4, text256 8, soon 16, last 32.
        assert charges(client, "limits") == "65"


def test_the_ack_counts_every_event_once_and_dedupe_covers_every_part_of_an_events_content(
    server: ServerProcess,
) -> None:
    """usage.proto UsageEvent.transaction_id and IngestAck, docs/architecture.md §5 step 4: (customer, transaction
    id) is the key; the same content is a duplicate, any other content (value, timestamp, event type, dimension,
    reservation) a conflict, inside one batch as across batches; a rejected event was never accepted."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "ledger")
        customer(client, "twin")

        def a(transaction_id: str, n: float, **changes: object) -> usage_pb2.UsageEvent:
            made = event(transaction_id, "ledger", "s", at_ms, {"n": n})
            for name, value in changes.items():
                if name == "dimensions":
                    assert isinstance(value, dict)
                    made.dimensions.update(value)
                else:
                    setattr(made, name, value)
            return made

        assert outcome(ingest(client, a("a1", 1), a("a2", 2))) == (2, 0, [])
        conflict = REJECT.DUPLICATE_CONFLICT
        batch = [
            a("a1", 1),  # 0: identical resend: duplicate
            a("a2", 3),  # 1: another value: conflict
            a("a3", 4),  # 2: new: accepted
            a("a3", 4),  # 3: identical to 2: duplicate
            a("a3", 5),  # 4: differs from 2: conflict
            a("a4", math.nan),  # 5: invalid
            a("a4", 8),  # 6: the invalid copy was never accepted: accepted
            event("a1", "twin", "s", at_ms, {"n": 16}),  # 7: another customer's a1: accepted
            a("a1", 1, timestamp_ms=at_ms - 1),  # 8: another timestamp: conflict
            a("a1", 1, event_type="c"),  # 9: another event type: conflict
            a("a1", 1, dimensions={"k": ""}),  # 10: one more (empty) dimension: conflict
            a("a1", 1, reservation_id="r-1"),  # 11: a reservation named: conflict
            a("a5", 0),  # 12: accepted, charges nothing
        ]
        ack = ingest(client, *batch)
        rejected = [(1, "a2", conflict), (4, "a3", conflict), (5, "a4", REJECT.INVALID_EVENT)]
        rejected += [(i, "a1", conflict) for i in (8, 9, 10, 11)]
        assert outcome(ack) == (4, 2, rejected)
        assert ack.accepted + ack.duplicates + len(ack.rejected) == len(batch)
        assert ack.rejected[0].message == "transaction_id 'a2' was already accepted with different content"
        assert (charges(client, "ledger"), charges(client, "twin")) == ("15", "16")  # 1 + 2 + 4 + 8; 16
        # The same batch again: everything accepted is now a duplicate, the rest is refused as before, nothing
        # is charged and nothing is journaled (journal_seq is the balance's as_of_seq, unmoved).
        seq = client.get_balance("ledger").as_of_seq
        again = ingest(client, *batch)
        assert outcome(again) == (0, 6, rejected)
        assert again.journal_seq == seq == client.get_balance("ledger").as_of_seq
        assert (charges(client, "ledger"), charges(client, "twin")) == ("15", "16")


def test_empty_batches_and_batch_ids(server: ServerProcess) -> None:
    """usage.proto UsageBatch.batch_id ("echoed in the ack. Optional") and IngestAck.journal_seq: an empty batch
    is answered, with its id, at the journal's current seq; the batch id is no idempotency key (the transaction
    ids are); on a stream every batch, empty or not, has its ack, in order."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "batches")
        seq = client.get_balance("batches").as_of_seq
        empty = ingest(client, batch_id="nothing")
        assert (empty.batch_id, outcome(empty), empty.journal_seq) == ("nothing", (0, 0, []), seq)
        first = ingest(client, event("e1", "batches", "s", at_ms, {"n": 1}), batch_id="")
        assert (first.batch_id, outcome(first), first.journal_seq) == ("", (1, 0, []), seq + 1)
        # The same batch id with other events: a new batch, accepted.
        second = ingest(client, event("e2", "batches", "s", at_ms, {"n": 2}), batch_id="")
        assert (outcome(second), second.journal_seq) == ((1, 0, []), seq + 2)
        batches = [
            usage_pb2.UsageBatch(batch_id="s0"),
            usage_pb2.UsageBatch(batch_id="s1", events=[event("e3", "batches", "s", at_ms, {"n": 4})]),
            usage_pb2.UsageBatch(batch_id="s2"),
            usage_pb2.UsageBatch(batch_id="s1", events=[event("e3", "batches", "s", at_ms, {"n": 4})]),
        ]
        acks = list(client.usage.IngestUsage(iter(batches), timeout=10))
        answers = [(ack.batch_id, outcome(ack), ack.journal_seq) for ack in acks]
        assert list(client.usage.IngestUsage(iter([]), timeout=10)) == []  # a stream of no batch: no ack, OK
        assert answers == [
            ("s0", (0, 0, []), seq + 2),
            ("s1", (1, 0, []), seq + 3),
            ("s2", (0, 0, []), seq + 3),
            ("s1", (0, 1, []), seq + 3),
        ]
        assert charges(client, "batches") == "7"


def stream_answers(
    client: TariffClient, batches: list[usage_pb2.UsageBatch]
) -> tuple[list[tuple[str, Outcome]], grpc.StatusCode, str]:
    """The acks an IngestUsage stream sent for `batches` (written before any ack is read), and how it ended."""
    acks: list[tuple[str, Outcome]] = []
    try:
        for ack in client.usage.IngestUsage(iter(batches), timeout=10):
            acks.append((ack.batch_id, outcome(ack)))
    except TariffError as e:
        return acks, e.code, e.details
    except grpc.RpcError as e:
        return acks, e.code(), e.details() or ""
    return acks, grpc.StatusCode.OK, ""


def test_a_batch_over_10000_events_is_refused_whole_on_both_calls(server: ServerProcess) -> None:
    """README "Limits and backpressure": more than 10,000 events is RESOURCE_EXHAUSTED, nothing of the batch
    applied; 10,000 is accepted. On the stream the batches before it stay acknowledged."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "bulk")
        many = [event(f"x{i}", "bulk", "c", at_ms) for i in range(10_001)]
        code, message = refusal(lambda: ingest(client, *many))
        assert (code, message) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "a batch holds at most 10000 events, this one 10001",
        )
        assert charges(client, "bulk") == "0"
        # calls: 2 an event. 10,000 events are one batch: 20,000.
        assert outcome(ingest(client, *many[:10_000])) == (10_000, 0, [])
        assert charges(client, "bulk") == "20000"
        # On the stream: the batch before it is acknowledged, the stream ends with it, and the batches sent after
        # it (already read by the server) are not applied: a resend on a new stream accepts them.
        before = usage_pb2.UsageBatch(batch_id="before", events=[event("y0", "bulk", "c", at_ms)])
        big = usage_pb2.UsageBatch(batch_id="big", events=[event(f"y{i}", "bulk", "c", at_ms) for i in range(10_001)])
        after = [
            usage_pb2.UsageBatch(batch_id=f"after{i}", events=[event(f"z{i}", "bulk", "c", at_ms)]) for i in (1, 2)
        ]
        acks, code, message = stream_answers(client, [before, big, *after])
        assert (acks, code) == ([("before", (1, 0, []))], grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert charges(client, "bulk") == "20002"
        # A message over 16 MiB is refused by gRPC before the server reads it (README "Limits and backpressure").
        huge = event("huge", "bulk", "c", at_ms, dimensions={"blob": "x" * (16 * 1024 * 1024)})
        assert refusal(lambda: ingest(client, huge))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert charges(client, "bulk") == "20002"
        resent = stream_answers(client, after)
        assert resent == ([("after1", (1, 0, [])), ("after2", (1, 0, []))], grpc.StatusCode.OK, "")
        assert charges(client, "bulk") == "20006"


def test_a_key_restricted_to_one_customer_sending_anothers_event_is_refused_whole_and_learns_nothing(
    server: ServerProcess, keys: Keys
) -> None:
    """README "API keys": every event of a batch must be the key's customer's; one that is not refuses the whole
    batch naming its index, nothing applied, whether that customer exists or not; on IngestUsage the batches
    before it stay acknowledged and the stream ends. Transaction ids are per customer: another customer's tell the
    key nothing."""
    at_ms = now_ms() - 2_000
    with server.client() as admin, server.client(api_key=keys.key["mine-meter"]) as meter:
        assert outcome(ingest(admin, event("shared", "yours", "s", at_ms, {"n": 100}))) == (1, 0, [])
        denied = grpc.StatusCode.PERMISSION_DENIED
        for other in ("yours", "ghost"):
            batch = (event("m1", "mine", "s", at_ms, {"n": 1}), event("m2", other, "s", at_ms, {"n": 1}))
            assert refusal(lambda batch=batch: ingest(meter, *batch)) == (
                denied,
                f"events[1]: key 'mine-meter' may not touch customer '{other}'; nothing in this batch was applied",
            )
        assert charges(admin, "mine") == "0"
        # The other customer's transaction id `shared` (with other content) is a new transaction of mine.
        assert outcome(ingest(meter, event("shared", "mine", "s", at_ms, {"n": 2}))) == (1, 0, [])
        ok = usage_pb2.UsageBatch(batch_id="ok", events=[event("m3", "mine", "s", at_ms, {"n": 4})])
        bad = usage_pb2.UsageBatch(batch_id="bad", events=[event("m4", "yours", "s", at_ms, {"n": 8})])
        after = [
            usage_pb2.UsageBatch(batch_id=f"a{i}", events=[event(f"m{i}", "mine", "s", at_ms, {"n": i})])
            for i in (16, 32)
        ]
        acks, code, message = stream_answers(meter, [ok, bad, *after])
        assert (acks, code) == ([("ok", (1, 0, []))], denied)
        assert message.startswith("events[0]: key 'mine-meter' may not touch customer 'yours'")
        # The stream ended at the refused batch: those sent after it were not applied either.
        assert (charges(admin, "mine"), charges(admin, "yours")) == ("6", "100")
        assert stream_answers(meter, after) == ([("a16", (1, 0, [])), ("a32", (1, 0, []))], grpc.StatusCode.OK, "")
        assert charges(admin, "mine") == "54"
        # Reservation ids are per customer too: another customer's open reservation, named by the key's event, is
        # "no reservation" exactly as one never made, and stays open.
        grant = contracts_pb2.Grant(id="g-yours", contract_id="k-yours", kind=contracts_pb2.PROMOTIONAL, amount="10")
        admin.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        reserve = balance_pb2.AuthorizeRequest(
            customer_id="yours", event_type="s", values={"n": 3}, reserve=True, reservation_id="r-yours"
        )
        assert admin.balance.Authorize(reserve).allowed
        ack = ingest(
            meter,
            event("m64", "mine", "s", at_ms, {"n": 0}, reservation_id="r-yours"),
            event("m65", "mine", "s", at_ms, {"n": 0}, reservation_id="r-never"),
        )
        notices = [(n.index, n.reservation_id, n.reason, n.message) for n in ack.notices]
        unknown = usage_pb2.NOTICE_RESERVATION_UNKNOWN
        said = "the customer has no reservation '{}': the event was rated, nothing was released"
        assert notices == [
            (0, "r-yours", unknown, said.format("r-yours")),
            (1, "r-never", unknown, said.format("r-never")),
        ]
        assert admin.get_balance("yours").credits_held == "3"


def test_late_events_rate_in_their_own_open_period_and_a_closed_period_refuses_new_ones_not_resends(
    server: ServerProcess,
) -> None:
    """README "Invoices and revenue" (Closing): late events for an open period are rated by their own timestamp
    (and show in its draft, not in the current period's charges); once the period is closed, new events for it
    are PERIOD_CLOSED, while an identical resend of an event accepted before is still a duplicate (dedupe comes
    first, §5 step 4) and the closed invoice does not move."""
    start_ms = this_hour_ms() - 40 * DAY_MS  # the first period ended 9 to 12 days ago
    old_ms, recent_ms = start_ms + 2 * DAY_MS, now_ms() - 2_000
    with server.client() as client:
        customer(client, "late", starting_at_ms=start_ms, credit="100")
        ack = ingest(client, event("l1", "late", "s", old_ms, {"n": 5}), event("l2", "late", "s", recent_ms, {"n": 7}))
        assert outcome(ack) == (2, 0, [])
        balance = client.get_balance("late")
        assert (balance.period_charges, balance.credits_remaining) == ("7", "88")
        first = invoices_pb2.PreviewInvoiceRequest(customer_id="late", period_start=stamp(start_ms))
        draft = client.invoices.PreviewInvoice(first)
        end_ms = draft.period_end.ToMilliseconds()
        assert (draft.subtotal, draft.period_start.ToMilliseconds()) == ("5", start_ms)
        close = invoices_pb2.ClosePeriodRequest(customer_id="late", period_start=stamp(start_ms))
        invoice = client.invoices.ClosePeriod(close)
        assert invoice.subtotal == "5"
        ack = ingest(
            client,
            event("l3", "late", "s", old_ms + 1, {"n": 1}),  # new, in the closed period
            event("l1", "late", "s", old_ms, {"n": 5}),  # the accepted l1 again
            event("l1", "late", "s", old_ms, {"n": 6}),  # l1 with other content
            event("l4", "late", "s", start_ms - 1, {"n": 1}),  # before the contract
            event("l5", "late", "s", recent_ms, {"n": 1}),
            event("l6", "late", "s", end_ms - 1, {"n": 1}),  # the closed period's last millisecond
            event("l7", "late", "s", end_ms, {"n": 10}),  # the next period's first: open
        )
        assert outcome(ack) == (
            2,
            1,
            [
                (0, "l3", REJECT.PERIOD_CLOSED),
                (2, "l1", REJECT.DUPLICATE_CONFLICT),
                (3, "l4", REJECT.NO_ACTIVE_CONTRACT),
                (5, "l6", REJECT.PERIOD_CLOSED),
            ],
        )
        # The period is named as its invoice's period_start reads, not in Unix ms.
        assert ack.rejected[0].message == f"the period starting {invoice.period_start.ToJsonString()} is closed"
        number = invoices_pb2.GetInvoiceRequest(invoice_number=invoice.invoice_number)
        assert client.invoices.GetInvoice(number).subtotal == "5"
        balance = client.get_balance("late")
        # l7 opens the second period, the current one: 7 + 1 + 10.
        assert (balance.period_charges, balance.credits_remaining) == ("18", "77")


def test_count_filters_on_two_keys_graduated_tiers_and_one_event_feeding_three_products(server: ServerProcess) -> None:
    """README "Pricing" and docs/architecture.md §5 step 6: COUNT charges per event whatever its values; a
    product with two filters takes only events matching both; graduated tiers telescope over the events of one
    batch; an event feeding SUM, COUNT and MAX products is charged by each, and refused whole (no product
    charged) when one of them lacks its value or a matching rate."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        for customer_id in ("counted", "filtered", "tiered", "fanned", "models"):
            customer(client, customer_id)
        # COUNT: 3 events (one with values, one with none, one with a NaN-free zero): 3 x 2.
        ack = ingest(
            client,
            event("c1", "counted", "c", at_ms, {"n": 100}),
            event("c2", "counted", "c", at_ms),
            event("c3", "counted", "c", at_ms, {"n": 0}),
        )
        assert (outcome(ack), charges(client, "counted")) == ((3, 0, []), "6")
        # gold_eu: region=eu and tier=gold both; one of them, or neither, feeds nothing (and is still accepted).
        ack = ingest(
            client,
            event("f1", "filtered", "f", at_ms, {"n": 1}, {"region": "eu", "tier": "gold"}),
            event("f2", "filtered", "f", at_ms, {"n": 2}, {"region": "eu", "tier": "silver"}),
            event("f3", "filtered", "f", at_ms, {"n": 4}, {"region": "us", "tier": "gold"}),
            event("f4", "filtered", "f", at_ms, {"n": 8}, {"region": "eu"}),
            event("f5", "filtered", "f", at_ms, {"n": 16}, {"region": "eu", "tier": "gold", "extra": "x"}),
            event("f6", "filtered", "f", at_ms, {}, {"region": "us"}),  # feeds nothing: its missing n is no matter
        )
        assert (outcome(ack), charges(client, "filtered")) == ((6, 0, []), "17")
        # grad: 4 + 5 (9 at 1) then 3 (one more at 1, two at 0.5) is 11; then 10 (at 0.5: 5) is 16 for 22
        # units, which is 10 x 1 + 12 x 0.5 = 16 priced at once.
        ack = ingest(client, *(event(f"g{i}", "tiered", "g", at_ms, {"n": n}) for i, n in enumerate((4, 5, 3))))
        assert (outcome(ack), charges(client, "tiered")) == ((3, 0, []), "11")
        ingest(client, event("g9", "tiered", "g", at_ms, {"n": 10}))
        assert charges(client, "tiered") == "16"
        # multi: n=2, g=3: m_sum 2, m_count 3, m_peak 15: 20. Then n=1, g=2: 1 + 3 + 0 (the peak stays 3): 4.
        ingest(client, event("m1", "fanned", "multi", at_ms, {"n": 2, "g": 3}))
        ingest(client, event("m2", "fanned", "multi", at_ms, {"n": 1, "g": 2}))
        assert charges(client, "fanned") == "24"
        # g missing: m_peak cannot read it, so neither m_sum nor m_count is charged.
        ack = ingest(client, event("m3", "fanned", "multi", at_ms, {"n": 50}))
        assert outcome(ack) == (0, 0, [(0, "m3", REJECT.INVALID_EVENT)])
        assert ack.rejected[0].message == "values['g'] is required by product 'm_peak'"
        assert charges(client, "fanned") == "24"
        # tokens has a rate for model=small only: model=large (or none) is NO_APPLICABLE_RATE, naming the model.
        ack = ingest(
            client,
            event("t1", "models", "tok", at_ms, {"n": 3}, {"model": "small"}),
            event("t2", "models", "tok", at_ms, {"n": 5}, {"model": "large"}),
            event("t3", "models", "tok", at_ms, {"n": 7}),
        )
        assert outcome(ack) == (1, 0, [(1, "t2", REJECT.NO_APPLICABLE_RATE), (2, "t3", REJECT.NO_APPLICABLE_RATE)])
        assert "{'model': 'large'}" in ack.rejected[0].message
        assert charges(client, "models") == "3"


def test_an_event_refused_for_want_of_a_rate_is_accepted_when_resent_once_a_version_prices_it(
    server: ServerProcess,
) -> None:
    """usage.proto NO_APPLICABLE_RATE: "The event changes nothing and may be resent once pricing covers it": a
    rate card of its own (`card-late`: tokens at 1 for model=small only), version 2 adding model=large at 2 from
    this hour; the refused event, resent unchanged under the same transaction id, is accepted and priced by it."""
    hour = this_hour_ms()
    at_ms = hour + (now_ms() - hour) // 2  # inside this hour, in the past
    with server.client() as client:
        pricing = client.pricing
        pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card-late", pricing_unit="credits"))
        first = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="card-late", upsert_rates=[unit("tokens", "1", model="small")]
        )
        pricing.CreateDraftVersion(first)
        pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="card-late", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        customer(client, "priced-later", card="card-late")
        large = event("big1", "priced-later", "tok", at_ms, {"n": 5}, {"model": "large"})
        small = event("small1", "priced-later", "tok", at_ms, {"n": 3}, {"model": "small"})
        ack = ingest(client, large, small)
        assert outcome(ack) == (1, 0, [(0, "big1", REJECT.NO_APPLICABLE_RATE)])
        second = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="card-late", based_on_version=1, upsert_rates=[unit("tokens", "2", model="large")]
        )
        pricing.CreateDraftVersion(second)
        pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="card-late", version=2, effective_from=stamp(hour))
        )
        assert outcome(ingest(client, large, small)) == (1, 1, [])
        assert charges(client, "priced-later") == "13"  # 3 x 1 + 5 x 2


def test_a_charge_too_large_to_hold_refuses_its_event_only(server: ServerProcess) -> None:
    """docs/architecture.md §6: ledger amounts are 128-bit counts of 10^-12 (about 1.7 x 10^26 credits); a charge
    that would overflow rejects the event (INVALID_EVENT), nothing charged, and the batch's other events rate.
    Rate card `card-dear`: product `dear` (SUM of n) at 99,999,999,999,999,999 (below 10^18) a unit."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        dear = pricing_pb2.Product(id="dear", event_type="dear", aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=dear))
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card-dear", pricing_unit="credits"))
        draft = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="card-dear", upsert_rates=[unit("dear", "99999999999999999")]
        )
        client.pricing.CreateDraftVersion(draft)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="card-dear", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        customer(client, "spender", card="card-dear")
        ack = ingest(
            client,
            event("h1", "spender", "dear", at_ms, {"n": 999_999_999_999_999}),  # about 10^32 credits
            event("h2", "spender", "dear", at_ms, {"n": 1}),
        )
        assert outcome(ack) == (1, 0, [(0, "h1", REJECT.INVALID_EVENT)])
        assert ack.rejected[0].message == "the charge for product 'dear' is out of range"
        assert charges(client, "spender") == "99999999999999999"


def mixed_batches(who: str, at_ms: int) -> list[usage_pb2.UsageBatch]:
    """Three batches for customer `who`: accepted events of four products, refusals of several reasons,
    duplicates and a conflict of the first batch, and an empty batch."""
    first = [
        event("x1", who, "s", at_ms, {"n": 1}),
        event("x2", who, "c", at_ms),
        event("x3", who, "multi", at_ms, {"n": 2, "g": 3}),
        event("x4", who, "s", at_ms, {"n": -1}),
        event("x5", who, "tok", at_ms, {"n": 5}, {"model": "large"}),
        event("x6", f"{who}-ghost", "s", at_ms, {"n": 1}),
        event("x7", who, "s", at_ms + 3_600_000, {"n": 1}),
        event("x8", who, "g", at_ms, {"n": 12}),
    ]
    second = [
        event("x1", who, "s", at_ms, {"n": 1}),
        event("x3", who, "multi", at_ms, {"n": 2, "g": 4}),
        event("x9", who, "s", at_ms, {"n": 4}),
        event("x9", who, "s", at_ms, {"n": 4}),
    ]
    return [
        usage_pb2.UsageBatch(batch_id="one", events=first),
        usage_pb2.UsageBatch(batch_id="two", events=second),
        usage_pb2.UsageBatch(batch_id="three"),
    ]


def test_the_stream_and_the_unary_call_answer_and_charge_alike(server: ServerProcess) -> None:
    """usage.proto: IngestUsageBatch is the unary form of IngestUsage; the same batches for two customers, one
    sent on each, get the same acks (customer ids aside) and the same charges."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "by-call")
        customer(client, "by-stream")
        unary = [client.usage.IngestUsageBatch(batch) for batch in mixed_batches("by-call", at_ms)]
        streamed = list(client.usage.IngestUsage(iter(mixed_batches("by-stream", at_ms)), timeout=10))

        def answers(acks: list[usage_pb2.IngestAck], who: str) -> list[tuple[str, Outcome, list[str]]]:
            return [(a.batch_id, outcome(a), [r.message.replace(who, "WHO") for r in a.rejected]) for a in acks]

        assert answers(unary, "by-call") == answers(streamed, "by-stream")
        rejected_first = [
            (3, "x4", REJECT.INVALID_EVENT),
            (4, "x5", REJECT.NO_APPLICABLE_RATE),
            (5, "x6", REJECT.UNKNOWN_CUSTOMER),
            (6, "x7", REJECT.TIMESTAMP_OUT_OF_RANGE),
        ]
        assert [outcome(a) for a in unary] == [
            (4, 0, rejected_first),
            (1, 2, [(1, "x3", REJECT.DUPLICATE_CONFLICT)]),
            (0, 0, []),
        ]
        # s 1 + c 2 + multi (2 + 3 + 15) + grad 12 (10 + 1) + s 4 = 38.
        assert charges(client, "by-call") == charges(client, "by-stream") == "38"


def test_an_acknowledged_batch_survives_kill_9(server: ServerProcess) -> None:
    """docs/architecture.md §7: an ack is sent only after the batch is durable; after kill -9 and a restart on
    the same data directory every acknowledged event is there, and resending is all duplicates."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "durable", credit="1000")
        batches = [
            usage_pb2.UsageBatch(
                batch_id=f"d{i}", events=[event(f"d{i}-{j}", "durable", "s", at_ms, {"n": 1}) for j in range(i + 1)]
            )
            for i in range(4)
        ]
        acks = [outcome(a) for a in client.usage.IngestUsage(iter(batches[:3]), timeout=10)]
        last = client.usage.IngestUsageBatch(batches[3])
    server.kill9()  # at once after the last ack
    server.restart()
    with server.client() as client:
        assert [*acks, outcome(last)] == [(i + 1, 0, []) for i in range(4)]
        balance = client.get_balance("durable")
        # 1 + 2 + 3 + 4 events of 1 unit at 1 credit.
        assert (balance.period_charges, balance.credits_remaining) == ("10", "990")
        assert balance.as_of_seq >= last.journal_seq
        again = [outcome(client.usage.IngestUsageBatch(batch)) for batch in batches]
        assert again == [(0, i + 1, []) for i in range(4)]
    # A stop by SIGTERM writes a snapshot, which the next start reads: dedupe holds across it too, duplicates
    # and conflicts alike.
    server.restart()
    with server.client() as client:
        changed = event("d0-0", "durable", "s", at_ms, {"n": 2})
        ack = ingest(client, batches[3].events[0], changed)
        assert outcome(ack) == (0, 1, [(1, "d0-0", REJECT.DUPLICATE_CONFLICT)])
        assert client.get_balance("durable").period_charges == "10"


def test_an_ack_larger_than_the_message_limit_still_reaches_the_client(server: ServerProcess) -> None:
    """usage.proto IngestAck: every batch gets its ack. A rejection's message quotes what it refuses (a
    customer_id that breaks the id rule, escaped: each backslash doubled), so 9 events naming a 1 MB customer
    id of backslashes (9 MB, under the 16 MiB message limit) made an 18 MB ack that gRPC refused to send: the
    batch's good event was committed and charged, but the caller got RESOURCE_EXHAUSTED, and every resend the
    same, never learning its outcome. The ack's messages are now cut to fit; reasons, indexes and transaction
    ids stay whole."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "echoed")
        odd = "\\" * 1_000_000
        batch = [event("ok", "echoed", "s", at_ms, {"n": 1})] + [event(f"odd{i}", odd, "s", at_ms) for i in range(9)]
        refused = [(i + 1, f"odd{i}", REJECT.UNKNOWN_CUSTOMER) for i in range(9)]
        ack = ingest(client, *batch)
        assert outcome(ack) == (1, 0, refused)
        assert all(r.message.startswith("customer_id: '\\\\") and len(r.message) <= 512 for r in ack.rejected)
        assert outcome(ingest(client, *batch)) == (0, 1, refused)
        streamed = list(client.usage.IngestUsage(iter([usage_pb2.UsageBatch(events=batch)]), timeout=10))
        assert [outcome(a) for a in streamed] == [(0, 1, refused)]
        assert charges(client, "echoed") == "1"


def test_bytes_that_are_not_a_usage_batch_are_refused_whole_and_end_the_stream_there(server: ServerProcess) -> None:
    """docs/architecture.md §5 step 2: bytes that are not a UsageBatch are INVALID_ARGUMENT naming the request,
    nothing applied; on IngestUsage the stream ends there and the batches sent after them are not applied."""
    at_ms = now_ms() - 2_000
    metadata = (("authorization", f"Bearer {server.api_key}"),)
    with server.client() as client, grpc.insecure_channel(server.target) as channel:
        customer(client, "garbled")
        garbage = b"\x12\x05\x0a\x03abc\xff"  # an event, then a truncated field
        unary = channel.unary_unary("/tariff.v1.UsageService/IngestUsageBatch")
        code, message = refusal(lambda: unary(garbage, timeout=10, metadata=metadata))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("request: not a UsageBatch")
        stream = channel.stream_stream(
            "/tariff.v1.UsageService/IngestUsage", response_deserializer=usage_pb2.IngestAck.FromString
        )
        batches = [
            usage_pb2.UsageBatch(batch_id=f"g{i}", events=[event(f"g{i}", "garbled", "s", at_ms, {"n": 1 + i})])
            for i in range(3)
        ]
        sent = [batches[0].SerializeToString(), garbage, batches[2].SerializeToString()]
        acks: list[str] = []
        with pytest.raises(grpc.RpcError) as ended:
            for ack in stream(iter(sent), timeout=10, metadata=metadata):
                acks.append(ack.batch_id)
        assert (acks, ended.value.code()) == (["g0"], grpc.StatusCode.INVALID_ARGUMENT)
        assert charges(client, "garbled") == "1"


def test_a_restricted_key_naming_an_actor_may_not_ingest(server: ServerProcess, keys: Keys) -> None:
    """README "API keys": a key restricted to some customers sending x-actor on a state-changing call (usage
    ingest included) is PERMISSION_DENIED, on both calls, and nothing is applied."""
    at_ms = now_ms() - 2_000
    with server.client() as admin, server.client(api_key=keys.key["mine-meter"], actor="alice") as meter:
        batch = usage_pb2.UsageBatch(events=[event("act1", "mine", "s", at_ms, {"n": 1000})])
        before = charges(admin, "mine")
        assert refusal(lambda: meter.usage.IngestUsageBatch(batch))[0] == grpc.StatusCode.PERMISSION_DENIED
        assert refusal(lambda: list(meter.usage.IngestUsage(iter([batch]), timeout=10)))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert charges(admin, "mine") == before


def test_changing_future_skew_between_starts_keeps_the_data_directory_serving(server_factory: ServerFactory) -> None:
    """README "What the server does today" (Usage): `--future-skew-s` is how far ahead an event may be, by the
    server's clock, when it is received. A batch is rated again from the journal at every start after a kill -9:
    replayed under the new flag instead of the one it was received under, an event accepted 200 s ahead was now
    refused, the digest differed, and the server would not start ("rating changed between releases"). Each batch
    is now replayed with the skew it was received under; events received after the change get the new one."""
    process = server_factory(name="skew")
    now = now_ms()
    with process.client() as client:
        catalogue(client)
        customer(client, "ahead")
        ack = ingest(
            client,
            event("k1", "ahead", "s", now + 200_000, {"n": 1}),
            event("k2", "ahead", "s", now + 400_000, {"n": 2}),
            event("k3", "ahead", "s", now - 1_000, {"n": 4}),
        )
        assert outcome(ack) == (2, 0, [(1, "k2", REJECT.TIMESTAMP_OUT_OF_RANGE)])
    process.kill9()
    process.extra_args = ("--future-skew-s", "60")
    process.start()
    with process.client() as client:
        assert charges(client, "ahead") == "5"
        ack = ingest(
            client, event("k4", "ahead", "s", now_ms() + 200_000, {"n": 8}), event("k5", "ahead", "s", now, {"n": 16})
        )
        assert outcome(ack) == (1, 0, [(0, "k4", REJECT.TIMESTAMP_OUT_OF_RANGE)])
        assert "more than 60 s in the future" in ack.rejected[0].message
    process.kill9()
    process.extra_args = ("--future-skew-s", "600")
    process.start()
    with process.client() as client:
        assert charges(client, "ahead") == "21"
        assert outcome(ingest(client, event("k6", "ahead", "s", now_ms() + 400_000, {"n": 32}))) == (1, 0, [])
        assert charges(client, "ahead") == "53"


@pytest.mark.parametrize("skew_s", ["-300", "100000000000000000"])
def test_a_future_skew_outside_0_to_a_year_is_a_usage_error(tmp_path: Path, skew_s: str) -> None:
    """`--future-skew-s` is how far ahead of the server's clock an event may be. A negative one (-300, a sign
    typed by mistake) started a server that refused every event of the last 5 minutes as "more than -300 s in the
    future"; 10^17 ended the start in an OverflowError traceback. Both are now usage errors (exit 2) naming the
    option, before anything is opened."""
    command = [sys.executable, "-m", "server.cli", "serve", "--listen", "127.0.0.1:0"]
    command += ["--data-dir", str(tmp_path / "data"), "--future-skew-s", skew_s]
    done = subprocess.run(command, capture_output=True, text=True, timeout=15, cwd=REPO_ROOT)
    assert done.returncode == 2, done.stderr
    assert "--future-skew-s" in done.stderr and f"{skew_s} is not within 0..31622400" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "data").exists()


def test_too_many_values_names_the_values_map(server: ServerProcess) -> None:
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "crowded")
        values = {f"v{i:02}": 1.0 for i in range(65)}
        ack = ingest(client, event("many", "crowded", "s", at_ms, values))
        assert outcome(ack) == (0, 0, [(0, "many", REJECT.INVALID_EVENT)])
        assert ack.rejected[0].message.startswith("values") and "dimensions" not in ack.rejected[0].message
