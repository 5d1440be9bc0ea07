"""The kernel through its Python binding: the wire, reject reasons and messages, dedupe, the digest.

Validation and routing rejections keep the reasons and messages the Python engine gave before the kernel
replaced it: clients and operators read them.
"""

from __future__ import annotations

import math

import pytest
from tariff.v1 import usage_pb2

from engine._kernel import Kernel
from engine.contracts import OveragePolicy
from tests.engine_fixtures import EPOCH_MS, HOUR_MS, World, picos, rate, unit
from tests.kernel_fixtures import KernelWorld, usage_event

NOW = EPOCH_MS + HOUR_MS


def small_world() -> KernelWorld:
    world = World()
    world.product("p", value_key="tokens", dimensions=("model",))
    world.rate_card()
    world.version([rate("p", unit("2"), model="gpt4")])
    world.customer()
    world.customer("other")
    world.contract()
    world.contract("c-other", customer_id="other", overage_policy=OveragePolicy.BLOCK)
    world.grant("g", "100")
    kernel = KernelWorld(world)
    kernel.load()
    return kernel


FUTURE_MS = NOW + 5 * 60 * 1000 + 1
BEFORE_MS = EPOCH_MS - 1

# (case, change to a good event, reason, message): the reasons and messages the Python engine gave before
# the kernel replaced it, kept word for word.
BAD_EVENTS: list[tuple[str, dict[str, object], str, str]] = [
    ("no transaction id", {"transaction_id": ""}, "INVALID_EVENT", "transaction_id is required"),
    ("no customer", {"customer_id": ""}, "INVALID_EVENT", "customer_id is required"),
    ("no event type", {"event_type": ""}, "INVALID_EVENT", "event_type is required"),
    ("no timestamp", {"timestamp_ms": 0}, "INVALID_EVENT", "timestamp_ms is required (Unix milliseconds, UTC)"),
    ("NaN", {"values": {"tokens": math.nan}}, "INVALID_EVENT", "values['tokens'] is nan: must be a finite number"),
    ("infinite", {"values": {"tokens": math.inf}}, "INVALID_EVENT", "values['tokens'] is inf: must be a finite number"),
    ("negative", {"values": {"tokens": -1.5}}, "INVALID_EVENT", "values['tokens'] is -1.5: must not be negative"),
    ("too large", {"values": {"tokens": 1e16}}, "INVALID_EVENT", "values['tokens'] is 1e+16: must be below 1e+15"),
    (
        "long dimension",
        {"dimensions": {"model": "m" * 300}},
        "INVALID_EVENT",
        "dimensions['model']: keys and values are at most 256 bytes",
    ),
    (
        "too many dimensions",
        {"dimensions": {f"k{i}": "v" for i in range(65)}},
        "INVALID_EVENT",
        "dimensions: at most 64 entries",
    ),
    ("missing value", {"values": {"other": 1.0}}, "INVALID_EVENT", "values['tokens'] is required by product 'p'"),
    (
        "future",
        {"timestamp_ms": FUTURE_MS},
        "TIMESTAMP_OUT_OF_RANGE",
        f"timestamp_ms {FUTURE_MS} is more than 300 s in the future",
    ),
    ("unknown customer", {"customer_id": "ghost"}, "UNKNOWN_CUSTOMER", "customer 'ghost' does not exist"),
    (
        "before the contract",
        {"timestamp_ms": BEFORE_MS},
        "NO_ACTIVE_CONTRACT",
        f"customer 'acme' has no contract covering timestamp_ms {BEFORE_MS}",
    ),
    (
        "no rate for the dimensions",
        {"dimensions": {"model": "llama"}},
        "NO_APPLICABLE_RATE",
        "rate card 'card' version 1 has no rate for product 'p' with {'model': 'llama'}",
    ),
]


@pytest.mark.parametrize(("case", "change", "reason", "message"), BAD_EVENTS, ids=[case[0] for case in BAD_EVENTS])
def test_a_refused_event_gets_its_reason_and_message(
    case: str, change: dict[str, object], reason: str, message: str
) -> None:
    fields: dict[str, object] = {
        "transaction_id": "t1",
        "customer_id": "acme",
        "event_type": "ai",
        "timestamp_ms": EPOCH_MS + 1,
        "dimensions": {"model": "gpt4"},
        "values": {"tokens": 10.0},
    } | change
    kernel = small_world()
    ack = kernel.ingest([usage_pb2.UsageEvent(**fields)], NOW)  # type: ignore[arg-type]
    assert ack.accepted == 0
    assert [(r.index, r.reason, r.message) for r in ack.rejected] == [
        (0, usage_pb2.RejectReason.Value(reason), message)
    ], case
    assert kernel.balance(NOW)["period_charges"] == 0


def test_a_resend_is_a_duplicate_and_other_content_under_the_same_id_a_conflict() -> None:
    kernel = small_world()
    first = usage_event("t1", EPOCH_MS + 1, {"tokens": 10}, dimensions={"model": "gpt4"})
    assert kernel.ingest([first], NOW).accepted == 1
    changed = usage_event("t1", EPOCH_MS + 1, {"tokens": 11}, dimensions={"model": "gpt4"})
    ack = kernel.ingest([first, changed], NOW)
    assert ack.duplicates == 1
    assert [(r.index, r.reason, r.message) for r in ack.rejected] == [
        (1, usage_pb2.DUPLICATE_CONFLICT, "transaction_id 't1' was already accepted with different content")
    ]
    assert kernel.balance(NOW)["period_charges"] == picos("20")


def test_dedupe_is_per_customer() -> None:
    kernel = small_world()
    kernel.world.grant("g2", "100", customer_id="other")
    kernel.load()
    events = [
        usage_event("same", EPOCH_MS + 1, {"tokens": 1}, dimensions={"model": "gpt4"}),
        usage_event("same", EPOCH_MS + 1, {"tokens": 1}, dimensions={"model": "gpt4"}, customer_id="other"),
    ]
    assert kernel.ingest(events, NOW).accepted == 2


def batch_bytes(tokens: float) -> bytes:
    return usage_pb2.UsageBatch(
        batch_id="b-42",
        events=[
            usage_event("t1", EPOCH_MS + 1, {"tokens": tokens}, dimensions={"model": "gpt4"}),
            usage_event("t2", EPOCH_MS + 1, {"tokens": -1}, dimensions={"model": "gpt4"}),
        ],
    ).SerializeToString()


def test_the_ack_echoes_the_batch_and_the_journal_seq_and_the_digest_follows_the_ledger() -> None:
    answers = [small_world().kernel.ingest(batch_bytes(3), NOW, 42) for _ in range(2)]
    assert answers[0] == answers[1]  # same input, same ack and digest, bit for bit
    ack = usage_pb2.IngestAck.FromString(answers[0][0])
    assert (ack.batch_id, ack.journal_seq, ack.accepted, len(ack.rejected)) == ("b-42", 42, 1, 1)
    ack_bytes, digest = small_world().kernel.ingest(batch_bytes(4), NOW, 42)
    assert ack_bytes == answers[0][0]  # the same counts and rejections...
    assert digest != answers[0][1]  # ...but a different charge: the digest tells them apart


def test_bytes_that_are_not_a_usage_batch_are_refused_and_change_nothing() -> None:
    kernel = small_world()
    before = kernel.kernel.snapshot()
    with pytest.raises(ValueError, match="does not decode"):
        kernel.kernel.ingest(b"\xff\xff\xff", NOW, 1)
    assert kernel.kernel.snapshot() == before


def test_authorize_blocks_without_usable_credit_and_commits_nothing() -> None:
    kernel = small_world()
    before = kernel.kernel.snapshot()
    assert kernel.authorize({"tokens": 10}, NOW, dimensions={"model": "gpt4"}) == (
        True,
        "OK",
        "",
        picos("20"),
        picos("100"),
    )
    denied = kernel.authorize({"tokens": 10}, NOW, customer_id="other", dimensions={"model": "gpt4"})
    assert denied == (False, "INSUFFICIENT_CREDIT", "available credit does not cover this usage", picos("20"), 0)
    assert kernel.authorize({"tokens": -1}, NOW, dimensions={"model": "gpt4"})[:2] == (False, "INVALID_REQUEST")
    assert kernel.kernel.snapshot() == before


def test_an_empty_kernel_knows_no_customer() -> None:
    kernel = Kernel()
    assert kernel.balance("acme", NOW) is None
    assert kernel.usage("acme") is None
