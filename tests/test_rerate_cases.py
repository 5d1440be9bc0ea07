"""Re-rating cases in the engine and the kernel (engine/rerate.py, engine/kernel/src/rerate.rs) that the other
re-rating tests do not cover: rollbacks of rollbacks re-rating back and forth over the same buckets, each
adjustment citing the versions it moved between; contract overrides (a multiplier, and a price whose window starts
after the effective hour) applied to re-rated usage as rating from scratch applies them; and which customers a
re-rating reports as touched (waking their balance watchers): those whose charges or draws it changed, not those
whose buckets only changed version.
"""

from __future__ import annotations

import asyncio

from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.ratecard import Cohort, Rate
from engine.versions import PublishResult
from server.journal import MemoryJournal
from server.recovery import recover
from server.sequencer import Sequencer
from server.usage_batches import UsageBatch
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, MINUTE_MS, World, picos, rate, unit
from tests.kernel_fixtures import usage_event

T = EPOCH_MS
NOW_MS = T + 10 * HOUR_MS


def card_world(customers: tuple[str, ...]) -> World:
    """Product "tokens" by model; version 1 of "card": 1 a token for gpt-4, 5 for llama; each customer with a
    contract from T and a 100-credit grant (a customer named "late-grant": its grant starts at T + 2h15)."""
    world = World()
    world.product("tokens", dimensions=("model",))
    world.rate_card()
    world.version(prices("1", "5"), effective_from_ms=T)
    for customer_id in customers:
        world.customer(customer_id)
        world.contract(f"k-{customer_id}", customer_id=customer_id)
        starts = T + 2 * HOUR_MS + 15 * MINUTE_MS if customer_id == "late-grant" else T
        world.grant(f"g-{customer_id}", "100", customer_id=customer_id, starts_at_ms=starts)
    return world


def prices(gpt4: str, llama: str) -> list[Rate]:
    return [rate("tokens", unit(gpt4), model="gpt-4"), rate("tokens", unit(llama), model="llama")]


def batch(customer_id: str, n: int, ts_ms: int, tokens: float, model: str) -> bytes:
    event = usage_event(
        f"{customer_id}-{n}", ts_ms, {"tokens": tokens}, customer_id=customer_id, dimensions={"model": model}
    )
    return usage_pb2.UsageBatch(batch_id=f"{customer_id}-{n}", events=[event]).SerializeToString()


class Machine:
    """A Billing fed as the writer feeds it, keeping what a replay would read."""

    def __init__(self, world: World) -> None:
        self.billing = Billing(engine=world.engine)
        self.log: list[cmd.AdminCommand | bytes] = list(world.journal)

    def apply(self, command: cmd.AdminCommand) -> object:
        result = self.billing.apply(command, self.billing.last_seq + 1)
        self.log.append(command)
        return result

    def ingest(self, customer_id: str, n: int, ts_ms: int, tokens: float, model: str = "gpt-4") -> None:
        usage = batch(customer_id, n, ts_ms, tokens, model)
        done = self.billing.ingest(usage, NOW_MS)
        assert done.accepted == 1, done.rejected
        self.log.append(usage)

    def draft(self, gpt4: str, llama: str = "5") -> int:
        draft = self.apply(cmd.CreateDraftVersion(NOW_MS, ACTOR, "card", 0, {}, (), tuple(prices(gpt4, llama)), (), ""))
        return int(draft.number)  # type: ignore[attr-defined]

    def publish(self, command: cmd.PublishVersion | cmd.RollbackRateCard) -> tuple[PublishResult, tuple[str, ...]]:
        """The answer, and the customers reported touched (whose watchers wake)."""
        result = self.apply(command)
        assert isinstance(result, PublishResult)
        return result, self.billing.touched_customers(command, result)

    def charged(self, customer_id: str) -> int:
        return self.billing.balance(customer_id, NOW_MS).period_charges

    def adjustments(self, customer_id: str) -> list[tuple[int, list[int], int, int, int]]:
        """(hour from T, old versions, new version, old amount, new amount), oldest first."""
        return [(a[1] - T // HOUR_MS, a[5], a[6], a[9], a[10]) for a in self.billing.kernel.adjustments(customer_id)]


def recover_from(m: Machine) -> bytes:
    """The kernel snapshot of a fresh machine fed the same log."""
    fresh = Billing()
    for item in m.log:
        if isinstance(item, bytes):
            fresh.ingest(item, NOW_MS)
        else:
            fresh.apply(item, fresh.last_seq + 1)
    return fresh.kernel.snapshot()


def test_rollbacks_of_rollbacks_rerate_back_and_forth_each_adjustment_citing_both_versions() -> None:
    m = Machine(card_world(("acme",)))
    for hour in range(4):
        m.ingest("acme", hour, T + hour * HOUR_MS + 5 * MINUTE_MS, 10)  # 10 tokens at 1: 40 in all
    v2 = m.draft("3")
    m.publish(cmd.PublishVersion(NOW_MS, ACTOR, "card", v2, T + 2 * HOUR_MS))  # hours 2 and 3 at 3: 80
    assert m.charged("acme") == picos("80")
    # A rollback to version 1 from hour 2: version 3, hours 2 and 3 at 1 again.
    back, _ = m.publish(cmd.RollbackRateCard(NOW_MS, ACTOR, "card", 1, T + 2 * HOUR_MS))
    assert (back.version.number, back.version.rollback_to, back.version.rollback_from) == (3, 1, v2)
    assert (back.buckets_rerated, back.rerated_amount_delta_picos) == (2, -picos("40"))
    assert m.charged("acme") == picos("40")
    # A rollback of the rollback: version 2's prices again from hour 2 (version 4, replacing the copy).
    forth, _ = m.publish(cmd.RollbackRateCard(NOW_MS, ACTOR, "card", v2, T + 2 * HOUR_MS))
    assert (forth.version.number, forth.version.rollback_to, forth.version.rollback_from) == (4, v2, 3)
    assert (forth.buckets_rerated, forth.rerated_amount_delta_picos) == (2, picos("40"))
    assert m.charged("acme") == picos("80")
    # And back to the first rollback (version 3, itself a copy of version 1) from hour 3: hour 3 at 1 again.
    last, _ = m.publish(cmd.RollbackRateCard(NOW_MS, ACTOR, "card", 3, T + 3 * HOUR_MS))
    assert (last.version.number, last.version.rollback_to, last.version.rollback_from) == (5, 3, 4)
    assert (last.buckets_rerated, last.rerated_amount_delta_picos) == (1, -picos("20"))
    assert m.charged("acme") == picos("60")
    ten, thirty = picos("10"), picos("30")
    assert m.adjustments("acme") == [
        (2, [1], v2, ten, thirty),
        (3, [1], v2, ten, thirty),
        (2, [v2], 3, thirty, ten),
        (3, [v2], 3, thirty, ten),
        (2, [3], 4, ten, thirty),
        (3, [3], 4, ten, thirty),
        (3, [4], 5, thirty, ten),
    ]
    # Usage arriving afterwards is priced by the timeline the rollbacks left: hour 2 by version 4 (3 a token).
    m.ingest("acme", 9, T + 2 * HOUR_MS + 30 * MINUTE_MS, 1)
    assert m.charged("acme") == picos("63")
    # Replaying the commands gives the same state.
    assert recover_from(m) == m.billing.kernel.snapshot()


def test_a_rerating_reports_touched_only_the_customers_whose_charges_or_draws_it_changed() -> None:
    m = Machine(card_world(("acme", "beta", "late-grant", "idle")))
    m.ingest("acme", 1, T + 2 * HOUR_MS + 30 * MINUTE_MS, 10)
    m.ingest("beta", 1, T + 2 * HOUR_MS + 30 * MINUTE_MS, 10, model="llama")
    m.ingest("late-grant", 1, T + 2 * HOUR_MS + 30 * MINUTE_MS, 10, model="llama")
    m.ingest("idle", 1, T + HOUR_MS, 10)  # before the effective hour: not re-rated
    assert m.billing.balance("late-grant", NOW_MS).available == picos("50")  # drawn at the event's time
    # Version 2 from hour 2 changes gpt-4's price only: acme's amount changes; beta's and late-grant's buckets
    # change version at the same price. Settled again, late-grant's charge is judged at its hour's start, before
    # its grant started: it moves to overage, so its balance changed too.
    result, touched = m.publish(cmd.PublishVersion(NOW_MS, ACTOR, "card", m.draft("2"), T + 2 * HOUR_MS))
    assert (result.customers_rerated, result.buckets_rerated) == (3, 3)
    assert set(touched) == {"acme", "late-grant"}
    assert m.charged("acme") == picos("20")
    assert m.charged("beta") == m.charged("late-grant") == picos("50")
    assert m.billing.balance("beta", NOW_MS).available == picos("50")
    late = m.billing.balance("late-grant", NOW_MS)
    assert (late.available, late.overage) == (picos("100"), picos("50"))
    # The same prices again for a cohort of beta only: its buckets change version, nothing else does.
    again = m.draft("2")
    result, touched = m.publish(
        cmd.PublishVersion(NOW_MS, ACTOR, "card", again, T + 2 * HOUR_MS, Cohort(customer_ids=("beta",)))
    )
    assert (result.customers_rerated, result.buckets_rerated, touched) == (1, 1, ())
    assert m.charged("beta") == picos("50")


def test_the_writer_wakes_watchers_of_changed_customers_only() -> None:
    """Through the server's writer (server/sequencer.py): what it hands the watch hub after the publish."""
    journal = MemoryJournal()
    handed: list[set[str]] = []
    world = card_world(("acme", "beta"))

    async def main() -> None:
        billing = recover(journal)
        sequencer = Sequencer(billing, journal, clock_ms=lambda: NOW_MS)
        sequencer.committed = lambda customers, _upto: handed.append(set(customers or ()))
        sequencer.start()
        for command in world.journal:
            await sequencer.run(command)
        await sequencer.run(UsageBatch(batch("acme", 1, T + 2 * HOUR_MS, 10, "gpt-4"), 100))
        await sequencer.run(UsageBatch(batch("beta", 1, T + 2 * HOUR_MS, 10, "llama"), 100))
        _, draft = await sequencer.run(
            cmd.CreateDraftVersion(NOW_MS, ACTOR, "card", 0, {}, (), tuple(prices("2", "5")), (), "")
        )
        handed.clear()
        _, published = await sequencer.run(
            cmd.PublishVersion(NOW_MS, ACTOR, "card", draft.number, T + 2 * HOUR_MS)  # type: ignore[attr-defined]
        )
        assert isinstance(published, PublishResult) and published.customers_rerated == 2
        await sequencer.close()

    asyncio.run(main())
    assert handed == [{"acme"}]


def overridden_world() -> World:
    """card_world's acme with two overrides on its contract: gpt-4 at half price throughout, llama at 2 a token
    from T + 2h."""
    world = card_world(("acme",))
    world.override("tokens", contract_id="k-acme", multiplier="0.5", match={"model": "gpt-4"}, override_id="half")
    world.override(
        "tokens",
        contract_id="k-acme",
        price="2",
        match={"model": "llama"},
        starting_at_ms=T + 2 * HOUR_MS,
        override_id="two",
    )
    return world


def test_overrides_apply_to_rerated_usage_in_their_windows_as_rating_from_scratch_does() -> None:
    usage = [(hour, model) for hour in range(4) for model in ("gpt-4", "llama") if (hour, model) != (0, "llama")]
    m = Machine(overridden_world())
    for n, (hour, model) in enumerate(usage):
        m.ingest("acme", n, T + hour * HOUR_MS + 5 * MINUTE_MS, 10, model)
    # gpt-4: 4 x 10 x 1 x 0.5 = 20; llama: hour 1 at 5 (before its override) 50, hours 2 and 3 at 2: 40.
    assert m.charged("acme") == picos("110")
    v2 = m.draft("3", "7")
    result, touched = m.publish(cmd.PublishVersion(NOW_MS, ACTOR, "card", v2, T + HOUR_MS))
    # gpt-4 hours 1..3 at 3 x 0.5; llama hour 1 at 7; llama hours 2 and 3 keep the override's 2 (version only).
    assert m.charged("acme") == picos("5") + 3 * picos("15") + picos("70") + 2 * picos("20")
    assert (result.buckets_rerated, result.rerated_amount_delta_picos, touched) == (6, picos("50"), ("acme",))
    changed = {(hour, old, new) for hour, _, _, old, new in m.adjustments("acme")}
    assert changed == {
        (1, picos("5"), picos("15")),
        (2, picos("5"), picos("15")),
        (3, picos("5"), picos("15")),
        (1, picos("50"), picos("70")),
        (2, picos("20"), picos("20")),
        (3, picos("20"), picos("20")),
    }
    # The same usage rated from scratch with version 2 in force from hour 1: the same aggregates and buckets.
    fresh = Machine(overridden_world())
    fresh.apply(cmd.CreateDraftVersion(NOW_MS, ACTOR, "card", 0, {}, (), tuple(prices("3", "7")), (), ""))
    fresh.apply(cmd.PublishVersion(NOW_MS, ACTOR, "card", v2, T + HOUR_MS))
    for n, (hour, model) in enumerate(usage):
        fresh.ingest("acme", n, T + hour * HOUR_MS + 5 * MINUTE_MS, 10, model)
    assert m.billing.kernel.usage("acme") == fresh.billing.kernel.usage("acme")
    assert m.billing.balance("acme", NOW_MS) == fresh.billing.balance("acme", NOW_MS)
