"""An acceptance audit of usage.proto's comments and README's usage statements ("What the server does today":
Usage; "Limits and backpressure"), statement by statement, over the wire, on what the earlier audits
(test_audit_usage*_wire, test_audit_ingest4_wire, test_audit_limits_wire, test_audit_unicode_wire,
test_audit_ids_wire, test_audit_docusage_wire, test_server_usage) leave out: every rejection reason in one batch on
the stream, a reservation_id at and one past its 256 bytes on an event (and the notice quoting it cut), an
event_type past a product's 256 bytes, a value just below 10^15 and values of exactly 18 decimal places, a
timestamp at the ends of int64, a batch_id past 256 bytes on the stream, a UNIQUE_COUNT event missing its dimension,
and a rejected event naming an open reservation. Amounts are worked out by hand in each docstring.

Catalogue (rate card `card`, pricing unit credits, version 1 in force from 2024-01-01):

    product   event type  aggregation              price
    s         s           SUM of n                 1 a unit
    micro     micro       SUM of n                 1,000,000 a unit
    users     u           UNIQUE_COUNT of `user`   2 a user
    u_sum     u           SUM of n                 1 a unit
    sized     sized       SUM of n, by `model`     1 a unit, for model=small only

One server for the file (`--close-grace off`: no period closes by itself; `--message-mb-max 1`: 1 MiB messages, read
or sent; `--batch-events-max 104755`, the most events an ack can answer within 1 MiB); each test makes its own
customers, with a contract from the hour 5 hours ago (ALLOW, overage at 1 USD) unless said otherwise."""

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
from tests.audit_fixtures import HOUR_MS, charges, open_contract, serving, this_hour_ms, unit
from tests.serverproc import REPO_ROOT, ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MESSAGE_BYTES_MAX = 1024 * 1024  # --message-mb-max 1
EVENTS_MAX = 104_755  # --batch-events-max: the most one ack can answer within 1 MiB
DAY_MS = 24 * HOUR_MS
REJECT = usage_pb2.RejectReason
Outcome = tuple[int, int, list[tuple[int, str, int]]]


def catalogue(client: TariffClient) -> None:
    products = [
        pricing_pb2.Product(id="s", event_type="s", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(id="micro", event_type="micro", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(id="users", event_type="u", aggregation=pricing_pb2.UNIQUE_COUNT, value_key="user"),
        pricing_pb2.Product(id="u_sum", event_type="u", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(
            id="sized", event_type="sized", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["model"]
        ),
    ]
    for product in products:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    rates = [unit("s", "1"), unit("micro", "1000000"), unit("users", "2"), unit("u_sum", "1")]
    rates.append(unit("sized", "1", model="small"))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-usagedoc")
    args = ["--close-grace", "off", "--message-mb-max", "1", "--batch-events-max", str(EVENTS_MAX)]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


def customer(client: TariffClient, customer_id: str, start_ms: int | None = None) -> int:
    """`customer_id` with contract `k-<id>` on `card` from `start_ms` (the hour 5 hours ago unless given)."""
    start = this_hour_ms() - 5 * HOUR_MS if start_ms is None else start_ms
    open_contract(client, customer_id, f"k-{customer_id}", start, rate_card_id="card")
    return start


def event(
    transaction_id: str,
    customer_id: str,
    event_type: str = "s",
    n: float = 1.0,
    *,
    at_ms: int | None = None,
    **fields: object,
) -> usage_pb2.UsageEvent:
    made = usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=now_ms() - 1_000 if at_ms is None else at_ms,
        values={"n": n},
    )
    for name, value in fields.items():
        if name == "dimensions":
            assert isinstance(value, dict)
            made.dimensions.update(value)
        elif name == "values":
            assert isinstance(value, dict)
            made.values.clear()
            made.values.update(value)
        else:
            setattr(made, name, value)
    return made


def ingest(client: TariffClient, *events: usage_pb2.UsageEvent, batch_id: str = "b") -> usage_pb2.IngestAck:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id=batch_id, events=events))
    return ack


def outcome(ack: usage_pb2.IngestAck) -> Outcome:
    """(accepted, duplicates, [(index, transaction id, reason)]) of an ack."""
    return ack.accepted, ack.duplicates, [(r.index, r.transaction_id, r.reason) for r in ack.rejected]


def stream(
    client: TariffClient, batches: list[usage_pb2.UsageBatch]
) -> tuple[list[usage_pb2.IngestAck], grpc.StatusCode, str, list[str]]:
    """The acks an IngestUsage stream sent for `batches`, and how it ended: code, message, fields named."""
    acks: list[usage_pb2.IngestAck] = []
    try:
        for ack in client.usage.IngestUsage(iter(batches), timeout=20):
            acks.append(ack)
    except TariffError as e:
        return acks, e.code, e.details, [v.field for v in e.field_violations]
    except grpc.RpcError as e:
        return acks, e.code(), e.details() or "", []
    return acks, grpc.StatusCode.OK, "", []


def test_one_batch_on_the_stream_rejects_an_event_for_each_reason_and_rates_the_good_ones_between(
    server: ServerProcess,
) -> None:
    """usage.proto RejectReason, EventRejection and IngestAck; README: "One bad event never sinks its batch". One
    batch, sent on IngestUsage, holds one event of each of the seven reasons, each between two good events of n = 1,
    2, 4, ... (the period's charges say exactly which were rated: 1 + 2 + ... + 128 = 255). `every` has a contract
    from 40 days ago (its first period, closed here, ended 9 to 12 days ago) to 1 hour after now's hour; `dup` was
    accepted with n = 1000 before the batch."""
    start_ms = this_hour_ms() - 40 * DAY_MS
    end_ms = this_hour_ms() + HOUR_MS
    with server.client() as client:
        open_contract(client, "every", "k-every", start_ms, end_ms, rate_card_id="card")
        first = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="every", period_start=stamp(start_ms))
        )
        assert outcome(ingest(client, event("dup", "every", n=1000))) == (1, 0, [])
        ahead_ms = now_ms() + 600_000
        batch = [
            event("g0", "every", n=1),
            event("bad-nan", "every", n=math.nan),  # 1: INVALID_EVENT
            event("g1", "every", n=2),
            event("bad-who", "nobody", n=1),  # 3: UNKNOWN_CUSTOMER
            event("g2", "every", n=4),
            event("bad-before", "every", at_ms=start_ms - 1),  # 5: NO_ACTIVE_CONTRACT
            event("g3", "every", n=8),
            event("bad-ahead", "every", at_ms=ahead_ms),  # 7: TIMESTAMP_OUT_OF_RANGE
            event("g4", "every", n=16),
            event("bad-closed", "every", at_ms=start_ms + DAY_MS),  # 9: PERIOD_CLOSED
            event("g5", "every", n=32),
            event("dup", "every", n=999),  # 11: DUPLICATE_CONFLICT
            event("g6", "every", n=64),
            event("bad-rate", "every", "sized", dimensions={"model": "big"}),  # 13: NO_APPLICABLE_RATE
            event("g7", "every", n=128),
        ]
        acks, code, _, _ = stream(client, [usage_pb2.UsageBatch(batch_id="all-reasons", events=batch)])
        assert code == grpc.StatusCode.OK
        (ack,) = acks
        reasons = [
            REJECT.INVALID_EVENT,
            REJECT.UNKNOWN_CUSTOMER,
            REJECT.NO_ACTIVE_CONTRACT,
            REJECT.TIMESTAMP_OUT_OF_RANGE,
            REJECT.PERIOD_CLOSED,
            REJECT.DUPLICATE_CONFLICT,
            REJECT.NO_APPLICABLE_RATE,
        ]
        expected = [(i, batch[i].transaction_id, reason) for i, reason in zip(range(1, 15, 2), reasons, strict=True)]
        assert (ack.batch_id, outcome(ack)) == ("all-reasons", (8, 0, expected))
        messages = [r.message for r in ack.rejected]
        assert messages[0] == "values['n'] is nan: must be a finite number"
        assert messages[1] == "customer 'nobody' does not exist"
        assert messages[2] == f"customer 'every' has no contract covering timestamp_ms {start_ms - 1}"
        assert messages[3] == f"timestamp_ms {ahead_ms} is more than 300 s in the future"
        assert messages[4] == f"the period starting {first.period_start.ToJsonString()} is closed"
        assert messages[5] == "transaction_id 'dup' was already accepted with different content"
        assert "'sized'" in messages[6], messages[6]
        assert charges(client, "every") == "1255"  # dup's 1000, then 255


def test_a_reservation_id_of_256_bytes_is_rated_and_one_past_it_is_invalid_event_naming_it(
    server: ServerProcess,
) -> None:
    """usage.proto UsageEvent.reservation_id: "at most 256 bytes, as a hold's id (more is INVALID_EVENT naming
    reservation_id: no hold has one)"; IngestAck.notices: an event naming a reservation that is not an open one of
    its customer is rated like any event and listed; EventNotice.message: "the reservation_id it quotes is cut to
    its first 128 characters ("…" after the quote when cut): the field above holds it whole". Bytes, not
    characters: 128 é are 256 bytes, 129 are 258. Charged: 1 + 2 + 16 = 19. A resend of the batch: the three
    accepted are duplicates (no notice: a duplicate is not rated), the two refused are refused again."""
    ids = ["r" * 256, "é" * 128, "r" * 257, "é" * 129]
    with server.client() as client:
        customer(client, "longhold")
        batch = [event(f"lh{i}", "longhold", n=2**i, reservation_id=rid) for i, rid in enumerate(ids)]
        batch.append(event("lh4", "longhold", n=16))
        ack = ingest(client, *batch)
        invalid = REJECT.INVALID_EVENT
        refused = [(2, "lh2", invalid), (3, "lh3", invalid)]
        assert outcome(ack) == (3, 0, refused)
        assert [r.message for r in ack.rejected] == ["reservation_id is longer than 256 bytes"] * 2
        said = "the customer has no reservation {}: the event was rated, nothing was released"
        unknown = usage_pb2.NOTICE_RESERVATION_UNKNOWN
        assert [(n.index, n.transaction_id, n.reservation_id, n.reason, n.message) for n in ack.notices] == [
            (0, "lh0", ids[0], unknown, said.format(repr("r" * 128) + "…")),
            (1, "lh1", ids[1], unknown, said.format(repr("é" * 128))),
        ]
        assert charges(client, "longhold") == "19"
        again = ingest(client, *batch)
        assert (outcome(again), list(again.notices)) == ((0, 3, refused), [])
        assert charges(client, "longhold") == "19"


def test_an_event_type_past_a_products_256_bytes_is_accepted_feeding_nothing_and_deduped_by_its_content(
    server: ServerProcess,
) -> None:
    """usage.proto UsageEvent.event_type: "no limit of its own but the message's ... a longer one feeds no product
    and is accepted, charging nothing"; README "Limits": Authorize estimates it at 0. Its digest is the dedupe key's
    content: the same long type again is a duplicate, a type one byte longer a DUPLICATE_CONFLICT. Charged: 1
    (the `s` event only)."""
    long_type, huge_type = "s" * 257, "x" * 100_000
    with server.client() as client:
        customer(client, "longtype")
        batch = [event("lt0", "longtype", long_type, 5), event("lt1", "longtype", huge_type, 5)]
        batch.append(event("lt2", "longtype", "s", 1))
        assert outcome(ingest(client, *batch)) == (3, 0, [])
        assert charges(client, "longtype") == "1"
        resend = [batch[0], event("lt1", "longtype", huge_type + "x", 5, at_ms=batch[1].timestamp_ms)]
        conflict = REJECT.DUPLICATE_CONFLICT
        assert outcome(ingest(client, *resend)) == (0, 1, [(1, "lt1", conflict)])
        estimate = client.authorize("longtype", long_type, {}, {"n": 5.0})
        assert (estimate.allowed, estimate.estimated_cost) == (True, "0")
        assert charges(client, "longtype") == "1"


def test_a_value_just_below_1e15_and_values_of_exactly_18_places_are_charged_exactly(server: ServerProcess) -> None:
    """usage.proto UsageEvent.values: "Finite, >= 0 and < 1e15 ... Converted to an exact decimal from their
    shortest round-trip representation; a value that needs more than 18 decimal places ... is refused, never
    rounded"; keys at most 256 bytes. The double nearest 10^15 - 0.1 is written 999999999999999.9: at 1 a unit,
    charged that. At 1,000,000 a unit (`micro`): 1e-18 (18 places) costs 0.000000000001, 1.5e-17 (18 places)
    0.000000000015, 0.1 + 0.2 (written 0.30000000000000004) 300000.00000000004; the line's quantity
    0.300000000000000056 prices 300000.000000000056, each step exact at 10^-12. A values key of exactly 256 bytes
    is taken (its event, n = 0, costs nothing)."""
    with server.client() as client:
        customer(client, "near")
        customer(client, "tiny")
        assert outcome(ingest(client, event("n0", "near", n=999999999999999.9))) == (1, 0, [])
        assert charges(client, "near") == "999999999999999.9"
        batch = [
            event("m0", "tiny", "micro", 1e-18),
            event("m1", "tiny", "micro", 1.5e-17),
            event("m2", "tiny", "micro", 0.1 + 0.2),
            event("m3", "tiny", "micro", values={"n": 0.0, "k" * 256: 1.0}),
        ]
        assert outcome(ingest(client, *batch)) == (4, 0, [])
        assert charges(client, "tiny") == "300000.000000000056"


def test_a_timestamp_at_either_end_of_int64_is_refused_with_its_reason(server: ServerProcess) -> None:
    """usage.proto UsageEvent.timestamp_ms: a negative one is INVALID_EVENT, one more than 5 minutes ahead
    TIMESTAMP_OUT_OF_RANGE, quoting it, whatever its size; one a few seconds inside the skew is taken. Charged: 1."""
    largest, smallest = 2**63 - 1, -(2**63)
    with server.client() as client:
        customer(client, "ends")
        ack = ingest(
            client,
            event("e0", "ends", at_ms=largest),
            event("e1", "ends", at_ms=smallest),
            event("e2", "ends", at_ms=now_ms() + 290_000),
        )
        assert outcome(ack) == (1, 0, [(0, "e0", REJECT.TIMESTAMP_OUT_OF_RANGE), (1, "e1", REJECT.INVALID_EVENT)])
        assert ack.rejected[0].message == f"timestamp_ms {largest} is more than 300 s in the future"
        assert ack.rejected[1].message == f"timestamp_ms {smallest} must be positive (Unix milliseconds, UTC)"
        assert charges(client, "ends") == "1"


def test_a_batch_id_past_256_bytes_ends_the_stream_after_the_acks_before_it(server: ServerProcess) -> None:
    """usage.proto IngestUsage: a batch refused whole, INVALID_ARGUMENT for one "whose batch_id is over 256 bytes",
    ends the stream with that status: the batches before it stay acknowledged, and none sent after it is applied
    (resend them on a new stream). 128 é (256 bytes) is echoed whole; one more byte refuses its batch. Charged: 1,
    then 4 once the batch after it is resent."""
    fits, over = "é" * 128, "é" * 128 + "x"
    with server.client() as client:
        customer(client, "bid")
        before = usage_pb2.UsageBatch(batch_id=fits, events=[event("b0", "bid", n=1)])
        refused = usage_pb2.UsageBatch(batch_id=over, events=[event("b1", "bid", n=2)])
        after = usage_pb2.UsageBatch(batch_id="after", events=[event("b2", "bid", n=4)])
        acks, code, message, fields = stream(client, [before, refused, after])
        assert ([(a.batch_id, outcome(a)) for a in acks], code) == (
            [(fits, (1, 0, []))],
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert fields == ["batch_id"] and "256 bytes" in message, (fields, message)
        assert charges(client, "bid") == "1"
        acks, code, _, _ = stream(client, [after])
        assert ([(a.batch_id, outcome(a)) for a in acks], code) == ([("after", (1, 0, []))], grpc.StatusCode.OK)
        assert charges(client, "bid") == "5"


def test_a_unique_count_event_missing_or_emptying_its_dimension_charges_none_of_its_products(
    server: ServerProcess,
) -> None:
    """README "Usage": INVALID_EVENT for "for UNIQUE_COUNT the dimension it counts, missing or empty (`""`...):
    then no product of the event is charged" (its SUM product `u_sum` neither). ann with n = 1: 2 + 1; bob with
    n = 4: 2 + 4; ann again with n = 8: 0 + 8 (ann counted once). Charged: 17."""
    with server.client() as client:
        customer(client, "uc")
        ack = ingest(
            client,
            event("u0", "uc", "u", 1, dimensions={"user": "ann"}),
            event("u1", "uc", "u", 100),
            event("u2", "uc", "u", 100, dimensions={"user": ""}),
            event("u3", "uc", "u", 4, dimensions={"user": "bob"}),
            event("u4", "uc", "u", 8, dimensions={"user": "ann"}),
        )
        invalid = REJECT.INVALID_EVENT
        assert outcome(ack) == (3, 0, [(1, "u1", invalid), (2, "u2", invalid)])
        assert all("user" in r.message for r in ack.rejected), [r.message for r in ack.rejected]
        assert charges(client, "uc") == "17"


def test_a_rejected_event_naming_an_open_reservation_leaves_it_held_and_a_resend_of_its_settlement_is_silent(
    server: ServerProcess,
) -> None:
    """IngestAck: "Every event is accepted, a duplicate ... or rejected" and a rejected event changes nothing, so
    the hold it names stays held; notices are "Empty ... for events that settled their reservation", and an
    identical resend of the settling event is a duplicate (no notice, nothing released again); a later event naming
    the settled hold is rated and noticed NOTICE_RESERVATION_ALREADY_SETTLED. A grant of 100; a hold of 5 units;
    the settling event uses 3; the late one 1. Charged: 4; remaining 96; nothing held."""
    with server.client() as client:
        customer(client, "settle")
        grant = contracts_pb2.Grant(id="g-settle", contract_id="k-settle", kind=contracts_pb2.PROMOTIONAL, amount="100")
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        reserve = balance_pb2.AuthorizeRequest(
            customer_id="settle", event_type="s", values={"n": 5}, reserve=True, reservation_id="hold-1"
        )
        assert client.balance.Authorize(reserve).allowed
        assert client.get_balance("settle").credits_held == "5"
        bad = ingest(client, event("h0", "settle", n=-3, reservation_id="hold-1"))
        assert (outcome(bad), list(bad.notices)) == ((0, 0, [(0, "h0", REJECT.INVALID_EVENT)]), [])
        assert client.get_balance("settle").credits_held == "5"
        settling = event("h1", "settle", n=3, reservation_id="hold-1")
        first = ingest(client, settling)
        assert (outcome(first), list(first.notices)) == ((1, 0, []), [])
        again = ingest(client, settling)
        assert (outcome(again), list(again.notices)) == ((0, 1, []), [])
        late = ingest(client, event("h2", "settle", n=1, reservation_id="hold-1"))
        assert outcome(late) == (1, 0, [])
        settled = usage_pb2.NOTICE_RESERVATION_ALREADY_SETTLED
        assert [(n.index, n.transaction_id, n.reservation_id, n.reason) for n in late.notices] == [
            (0, "h2", "hold-1", settled)
        ]
        balance = client.get_balance("settle")
        assert (balance.period_charges, balance.credits_remaining, balance.credits_held) == ("4", "96", "0")


def test_a_malformed_customer_id_is_quoted_cut_to_128_characters_and_its_index_and_reason_kept(
    server: ServerProcess,
) -> None:
    """usage.proto EventRejection.message: "It quotes what it refuses, a customer_id cut to its first 128 characters
    ("…" after the quote when cut)"; RejectReason UNKNOWN_CUSTOMER: an id breaking the rule stays UNKNOWN_CUSTOMER,
    its message saying so. 129 and 300 characters are cut (escaped as Python's repr escapes: a newline is `\\n`);
    a malformed id of 128 characters is quoted whole. The good event between them is rated: 1."""
    why = "must be 1-128 characters of letters, digits and ._:@-, so no customer has it"
    ids = ["a" * 129, "é" * 300, "ab\n" * 100, "!" * 128]
    quoted = [repr("a" * 128) + "…", repr("é" * 128) + "…", repr(("ab\n" * 43)[:128]) + "…", repr("!" * 128)]
    with server.client() as client:
        customer(client, "quoted")
        batch = [event(f"q{i}", customer_id) for i, customer_id in enumerate(ids)]
        batch.insert(2, event("q-good", "quoted"))
        ack = ingest(client, *batch)
        unknown = REJECT.UNKNOWN_CUSTOMER
        assert outcome(ack) == (1, 0, [(0, "q0", unknown), (1, "q1", unknown), (3, "q2", unknown), (4, "q3", unknown)])
        assert [r.message for r in ack.rejected] == [f"customer_id: {q} {why}" for q in quoted]
        assert charges(client, "quoted") == "1"


def test_a_resend_with_zero_written_as_minus_zero_is_a_duplicate_not_a_conflict(server: ServerProcess) -> None:
    """usage.proto UsageEvent.values are "Converted to an exact decimal": -0.0 and 0.0 are the quantity 0 (a JSON
    encoder writes -0 as 0), so a resend changing one into the other is the same content, a duplicate, as is
    0.1 + 0.2 resent as the literal 0.30000000000000004 (the same double). Charged: 0.30000000000000004 at 1 a unit, rounded to 10^-12: 0.3."""
    at_ms = now_ms() - 1_000
    with server.client() as client:
        customer(client, "zeros")
        sent = [event("z0", "zeros", n=-0.0, at_ms=at_ms), event("z1", "zeros", n=0.1 + 0.2, at_ms=at_ms)]
        assert outcome(ingest(client, *sent)) == (2, 0, [])
        resent = [event("z0", "zeros", n=0.0, at_ms=at_ms), event("z1", "zeros", n=0.30000000000000004, at_ms=at_ms)]
        assert outcome(ingest(client, *resent)) == (0, 2, [])
        assert charges(client, "zeros") == "0.3"


def test_no_version_in_force_refuses_an_event_feeding_a_product_not_one_feeding_none(server: ServerProcess) -> None:
    """README "Usage": NO_APPLICABLE_RATE for "no rate-card version in force at the event's time"; "An event type
    that feeds no product is accepted and charges nothing" (docs/architecture.md §5 step 5: before the version is
    looked for); RejectReason NO_APPLICABLE_RATE: "may be resent once pricing covers it". Card `later` has one
    version, in force from the next hour: an `s` event now is NO_APPLICABLE_RATE, even one lacking the value `s`
    needs (the version is looked for before the measure), and an event of a type no product has is accepted."""
    next_hour_ms = this_hour_ms() + HOUR_MS
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="later", pricing_unit="credits"))
        draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="later", upsert_rates=[unit("s", "1")])
        client.pricing.CreateDraftVersion(draft)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="later", version=1, effective_from=stamp(next_hour_ms))
        )
        open_contract(client, "unpriced", "k-unpriced", this_hour_ms() - 5 * HOUR_MS, rate_card_id="later")
        ack = ingest(
            client,
            event("p0", "unpriced", "s", 1),
            event("p1", "unpriced", "s", values={"m": 1.0}),
            event("p2", "unpriced", "no-such-type", 1),
        )
        unpriced = REJECT.NO_APPLICABLE_RATE
        assert outcome(ack) == (1, 0, [(0, "p0", unpriced), (1, "p1", unpriced)])
        assert charges(client, "unpriced") == "0"


def grant_window(client: TariffClient, customer_id: str, grant_id: str, starts_ms: int, expires_ms: int) -> None:
    """A promotional grant of 100 on `k-<customer_id>`, usable from `starts_ms` up to but not at `expires_ms`."""
    grant = contracts_pb2.Grant(
        id=grant_id,
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PROMOTIONAL,
        amount="100",
        starts_at=stamp(starts_ms),
        expires_at=stamp(expires_ms),
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def test_a_grant_pays_the_events_dated_in_its_window_holding_its_start_and_not_its_end(server: ServerProcess) -> None:
    """usage.proto UsageEvent.timestamp_ms: "the grants that may pay it those usable at it ..., each window holding
    its start and not its end". A grant of 100 from 2 hours ago to 4 minutes ahead; events of 1 unit dated its
    start less 1 ms (overage), its start (credit), its end less 1 ms and its end (both within the 5 minutes ahead
    an event may be: credit, then overage). Charged 4: 2 from the grant (98 left), 2 overage."""
    start_ms = this_hour_ms() - 2 * HOUR_MS
    end_ms = now_ms() + 240_000
    with server.client() as client:
        customer(client, "window")
        grant_window(client, "window", "g-window", start_ms, end_ms)
        ack = ingest(
            client,
            event("w0", "window", at_ms=start_ms - 1),
            event("w1", "window", at_ms=start_ms),
            event("w2", "window", at_ms=end_ms - 1),
            event("w3", "window", at_ms=end_ms),
        )
        assert outcome(ack) == (4, 0, [])
        balance = client.get_balance("window")
        assert (balance.period_charges, balance.credits_remaining, balance.overage_amount) == ("4", "98", "2")


def test_a_late_event_dated_before_an_expiry_already_recorded_is_not_paid_by_that_grant(server: ServerProcess) -> None:
    """usage.proto UsageEvent.timestamp_ms: the grants that may pay an event are those usable at its timestamp,
    "credit whose breakage is already recorded aside". A grant of 100 from 4 hours ago that expired 1 hour ago
    (its 100 recorded as breakage when the balance is read): an event dated 2 hours ago, received now, is overage
    (1), and the grant's expired 100 stays as it is."""
    with server.client() as client:
        customer(client, "broken")
        grant_window(client, "broken", "g-broken", this_hour_ms() - 4 * HOUR_MS, this_hour_ms() - HOUR_MS)
        before = {g.grant_id: (g.drawn, g.remaining, g.expired) for g in client.get_balance("broken").grants}
        assert before == {"g-broken": ("0", "0", "100")}
        ack = ingest(client, event("late", "broken", at_ms=this_hour_ms() - 2 * HOUR_MS))
        assert outcome(ack) == (1, 0, [])
        balance = client.get_balance("broken")
        assert (balance.period_charges, balance.overage_amount) == ("1", "1")
        assert {g.grant_id: (g.drawn, g.remaining, g.expired) for g in balance.grants} == before


def test_a_batch_filling_its_message_with_refused_events_is_acknowledged_on_both_calls(server: ServerProcess) -> None:
    """usage.proto EventRejection.message and README "Usage": "Every batch gets its ack", "so that the ack is always
    sent". A rejection echoes its event's transaction id and adds its index and reason: 10,000 events of a
    transaction id alone (INVALID_EVENT: no customer_id) of about 100 bytes, filling a 1 MiB message, have an ack
    about 50 KB larger than the batch even with every message left out, which gRPC refused to send ("Sent message
    larger than max"): the call failed RESOURCE_EXHAUSTED, though its first 3 events (1, 2 and 4 units) were
    committed, and every resend failed alike. The ack leaves the transaction ids out then, its indexes and reasons
    whole (the index names the event in the batch its sender holds). Charged: 7, once; 15 with the batch sent
    after it on the stream."""
    with server.client() as client:
        customer(client, "filled")
        good = [event(f"f{i}", "filled", n=2**i) for i in range(3)]
        probe = usage_pb2.UsageBatch(
            batch_id="filled", events=[*good, *(usage_pb2.UsageEvent(transaction_id="x" * 50) for _ in range(9_997))]
        )
        size = 50 + (MESSAGE_BYTES_MAX - 64 - probe.ByteSize()) // 9_997
        refused = [usage_pb2.UsageEvent(transaction_id=f"{i:05d}" + "x" * (size - 5)) for i in range(9_997)]
        batch = usage_pb2.UsageBatch(batch_id="filled", events=[*good, *refused])
        assert MESSAGE_BYTES_MAX - 20_000 < batch.ByteSize() <= MESSAGE_BYTES_MAX - 64
        expected = [(3 + i, "", REJECT.INVALID_EVENT) for i in range(9_997)]
        ack = client.usage.IngestUsageBatch(batch)
        assert (ack.batch_id, outcome(ack)) == ("filled", (3, 0, expected))
        assert ack.ByteSize() <= MESSAGE_BYTES_MAX and not any(r.message for r in ack.rejected)
        assert charges(client, "filled") == "7"
        after = usage_pb2.UsageBatch(batch_id="after", events=[event("f3", "filled", n=8)])
        acks, code, _, _ = stream(client, [batch, after])
        assert ([(a.batch_id, outcome(a)) for a in acks], code) == (
            [("filled", (0, 3, expected)), ("after", (1, 0, []))],
            grpc.StatusCode.OK,
        )
        assert charges(client, "filled") == "15"


@pytest.mark.parametrize(("message_mb", "events_max"), [(1, 104_755), (16, 1_677_619)])
def test_more_events_a_batch_than_one_ack_can_answer_is_a_usage_error(
    tmp_path: Path, message_mb: int, events_max: int
) -> None:
    """README "Limits and backpressure": "Every batch gets its ack". An ack answers each refused event with its
    index and reason, up to 10 bytes even with every id and message left out, where the event may be 2 (an empty
    one): `--batch-events-max 200000 --message-mb-max 1` started a server whose ack to 200,000 empty events (a
    400 KB batch) was 1.6 MB, which gRPC refused to send. More events than (the message limit - 1 KiB) / 10 bytes
    is now a usage error (exit 2) naming both options, before anything is opened: 104,755 at 1 MiB, 1,677,619
    at 16 MiB."""
    command = [sys.executable, "-m", "server.cli", "serve", "--listen", "127.0.0.1:0"]
    command += ["--data-dir", str(tmp_path / "data"), "--message-mb-max", str(message_mb)]
    done = subprocess.run(
        [*command, "--batch-events-max", str(events_max + 1)], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT
    )
    assert done.returncode == 2, done.stderr
    assert "--batch-events-max" in done.stderr and f"--message-mb-max {message_mb}" in done.stderr, done.stderr
    assert f"at most {events_max}" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()


def test_a_batch_of_as_many_empty_events_as_one_ack_can_answer_at_1_mib_is_answered(server: ServerProcess) -> None:
    """The other side of the bound above: the module's server (`--batch-events-max 104755 --message-mb-max 1`)
    started, and a batch of 104,755 empty events (INVALID_EVENT each: "transaction_id is required"), with a
    batch_id of 256 bytes, is answered: every index and reason, within 1 MiB."""
    with server.client() as client:
        batch = usage_pb2.UsageBatch(batch_id="b" * 256, events=[usage_pb2.UsageEvent()] * EVENTS_MAX)
        ack = client.usage.IngestUsageBatch(batch, timeout=60)
        assert ack.ByteSize() <= MESSAGE_BYTES_MAX
        assert (ack.batch_id, ack.accepted, ack.duplicates) == ("b" * 256, 0, 0)
        assert [(r.index, r.reason) for r in ack.rejected] == [(i, REJECT.INVALID_EVENT) for i in range(EVENTS_MAX)]
