"""The kernel's explain records (engine/kernel/src/explain.rs), through the binding: for random usage across two rate
card versions, volume tiers that give charges back, grants that run out into overage and two lines, the events
recorded for each line sum to the kernel's period aggregate of that line (amount, quantity, events, credits per
grant, overage), every accepted event is recorded once per line, and nothing is recorded while recording is off.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from engine._kernel import Kernel
from engine.lines import line_id
from engine.ratecard import TierMode
from server.explain_index import IndexedEvent, parse_events
from tests.engine_fixtures import DAY_MS, EPOCH_MS, basic_world, rate, tiered, unit
from tests.kernel_fixtures import KernelWorld, usage_event

CUT_MS = EPOCH_MS + 3 * DAY_MS  # version 2 (cheaper, volume tiers) from here on
VOLUME = tiered(TierMode.VOLUME, ("10", "2"), ("", "0.5"))  # crossing 10 prices everything at 0.5: a refund


def world_with_two_versions() -> KernelWorld:
    world = basic_world([rate("tokens", unit("3"))])
    world.version([rate("tokens", VOLUME)], effective_from_ms=CUT_MS)
    world.grant("small", "7")
    world.grant("later", "5", priority=1)
    kernel = KernelWorld(world)
    kernel.load()
    return kernel


def indexed(records: bytes) -> dict[bytes, list[tuple[int, IndexedEvent]]]:
    """Events by line key (the index key's first 16 bytes), each with its entry's first journal seq, in order."""
    by_line: dict[bytes, list[tuple[int, IndexedEvent]]] = defaultdict(list)
    for key, value in Kernel.explain_entries(records):
        by_line[key[:16]].extend((int.from_bytes(key[16:], "big"), e) for e in parse_events(value))
    return by_line


events_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=6 * DAY_MS - 1),  # timestamp offset: both versions
        st.integers(min_value=1, max_value=9),  # tokens
        st.sampled_from(["gpt4", "claude"]),  # model: two lines
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events=events_strategy, batch_size=st.integers(min_value=1, max_value=7))
def test_recorded_events_sum_to_their_lines_aggregate(events: list[tuple[int, int, str]], batch_size: int) -> None:
    kernel = world_with_two_versions()
    kernel.kernel.set_explain(1)
    now = EPOCH_MS + 7 * DAY_MS
    sent = [
        usage_event(f"t{i}", EPOCH_MS + offset, {"tokens": tokens}, dimensions={"model": model})
        for i, (offset, tokens, model) in enumerate(events)
    ]
    for start in range(0, len(sent), batch_size):
        ack = kernel.ingest(sent[start : start + batch_size], now)
        assert ack.accepted == len(sent[start : start + batch_size])
    by_line = indexed(kernel.kernel.take_explain())
    usage = kernel.kernel.usage("acme")
    assert usage is not None
    aggregates, _ = usage
    assert len(by_line) == len(aggregates)
    recorded: Counter[str] = Counter()
    versions: set[int] = set()
    for period_start, product_id, values, quantity, count, amount, overage, drawn in aggregates:
        line = line_id(product_id, dict(zip(("model", "region"), values, strict=True)))
        found = [e for _, e in by_line[Kernel.explain_line_key("acme", period_start, line)]]
        assert sum(e.amount_picos for e in found) == amount
        assert sum(e.quantity_e18 for e in found) == quantity
        assert len(found) == count
        assert sum(e.overage_picos for e in found) == overage
        draws: Counter[str] = Counter()
        for e in found:
            draws.update(dict(e.draws))
            assert sum(c for _, c in e.draws) + e.overage_picos == e.amount_picos
        assert {g: c for g, c in draws.items() if c} == dict(drawn)
        recorded.update(e.transaction_id for e in found)
        versions.update(e.version for e in found)
    assert recorded == Counter(f"t{i}" for i in range(len(sent))), "each accepted event once, in its one line"
    assert versions <= {1, 2}
    assert kernel.kernel.take_explain() == b""


def test_refunds_are_recorded_as_negative_amounts_in_journal_order() -> None:
    kernel = world_with_two_versions()
    kernel.kernel.set_explain(1)
    day4 = CUT_MS + DAY_MS
    # 6 tokens at 2 = 12; 6 more cross the volume tier: 12 x 0.5 = 6 in all, so the second event gives back 6.
    kernel.ingest([usage_event("a", day4, {"tokens": 6}, dimensions={"model": "gpt4"})], day4)
    kernel.ingest([usage_event("b", day4 + 1, {"tokens": 6}, dimensions={"model": "gpt4"})], day4)
    records = kernel.kernel.take_explain()
    (found,) = indexed(records).values()
    assert [(seq, e.transaction_id, e.amount_picos) for seq, e in found] == [
        (1, "a", 12 * 10**12),
        (1, "b", -6 * 10**12),
    ]
    # One entry per line, keyed by its first seq; what an earlier write covered is left out.
    ((key, _),) = Kernel.explain_entries(records, 1)
    assert int.from_bytes(key[16:], "big") == 2
    assert Kernel.explain_entries(records, 2) == []
    assert found[0][1].draws == [("small", 7 * 10**12), ("later", 5 * 10**12)]
    assert found[1][1].draws == [("later", -5 * 10**12), ("small", -1 * 10**12)]  # given back in reverse burn order
    assert found[0][1].overage_picos == found[1][1].overage_picos == 0


def test_nothing_is_recorded_before_the_seq_asked_nor_when_off() -> None:
    kernel = world_with_two_versions()
    kernel.kernel.set_explain(3)
    for i in range(4):
        kernel.ingest([usage_event(f"e{i}", EPOCH_MS + i, {"tokens": 1}, dimensions={"model": "gpt4"})], EPOCH_MS + 10)
    (found,) = indexed(kernel.kernel.take_explain()).values()
    assert [(seq, e.transaction_id) for seq, e in found] == [(3, "e2"), (3, "e3")]  # one entry, from seq 3
    kernel.kernel.set_explain(None)
    kernel.ingest([usage_event("e9", EPOCH_MS + 9, {"tokens": 1}, dimensions={"model": "gpt4"})], EPOCH_MS + 10)
    assert kernel.kernel.take_explain() == b""


@settings(max_examples=40, deadline=None)
@given(models=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5))
def test_the_kernels_line_ids_are_engine_lines_ids(models: list[str]) -> None:
    """Any dimension values (escaped characters, non-ASCII) give the line id engine/lines.py gives."""
    kernel = world_with_two_versions()
    kernel.kernel.set_explain(1)
    sent = [usage_event(f"t{i}", EPOCH_MS + i, {"tokens": 1}, dimensions={"model": m}) for i, m in enumerate(models)]
    kernel.ingest(sent, EPOCH_MS + DAY_MS)
    by_line = indexed(kernel.kernel.take_explain())
    expected = {
        Kernel.explain_line_key("acme", EPOCH_MS, line_id("tokens", {"model": m, "region": ""})): m for m in models
    }
    assert set(by_line) == set(expected)
    for key, model in expected.items():
        assert {e.transaction_id for _, e in by_line[key]} == {f"t{i}" for i, m in enumerate(models) if m == model}
