"""A publish's re-rating while it runs online: which customers it has still to re-rate, and the rule that keeps
replay identical however its work was interleaved with usage.

The server journals a retroactive PublishVersion (or RollbackRateCard) first and re-rates afterwards, so usage
goes on being ingested meanwhile (server/sequencer.py). The publish record leaves a `PendingRerating` in the
state: the plan's customers (engine/rerate.py), none re-rated yet. From then on, until the writer journals the
re-rating's completion record:

- a usage batch, a Reserve, a ReserveBatch or a ReleaseReservation first re-rates the pending customers it names ("re-rate on
  touch"), then applies as usual; replay does the same, so each customer is re-rated before any usage of it
  newer than the publish, exactly as when the publish re-rated everyone at once;
- an AdvanceClock only expires the holds whose TTL ran out, re-rating their customers first (engine/credits.py):
  its breakage and rollovers would depend on whether background slices had reached a customer, which no record
  says, so they wait for the completion (which the writer makes at once once one is due, then journals the
  AdvanceClock that records them: server/sequencer.py `_clock_before`); which holds ran out the re-rating never
  changes;
- between commands the writer re-rates the next pending customers in plan order (background slices). No record
  says so: re-rating a customer reads only that customer's account and the tables, which nothing changes until
  completion (every other admin command waits for it), so when it happens does not change what it does;
- the completion record re-rates whoever is still pending (in replay: everyone nobody touched) and evaluates the
  balance rules for every customer of the plan, in plan order; the alerts they fire are that record's.

So per customer the order of changes is the one a single all-at-once re-rating gives, the alerts are fired at a
journaled point, and a crash at any moment loses nothing (the publish is durable, the pending set is rebuilt by
replay) and re-rates nothing twice (a customer leaves the pending set when it is re-rated, and a snapshot holds
the set as it is). Sans-I/O like the rest of engine/.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # engine/control.py holds a PendingRerating, and engine/rerate.py imports engine/control.py
    from engine._kernel import Kernel
    from engine.rerate import RerationPlan


class PendingRerating(msgspec.Struct):
    """A publish's re-rating not completed yet (a field of BillingState, so snapshots hold it)."""

    publish_seq: int  # the publish's journal record: adjustment entries cite it
    rate_card_id: str
    from_hour: int
    customers: list[str]  # the plan's customers, in plan order
    # Those not re-rated yet (a dict, not a set: snapshot bytes keep one order).
    pending: dict[str, None]
    cursor: int = 0  # background slices have looked at customers[:cursor]
    # What the re-rating did so far: customers, buckets, events, amount delta, closed buckets/events/amount.
    done: tuple[int, int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0, 0)
    # The re-rated customers whose charges or draws changed, in the order re-rated (the ones it wakes watchers of).
    changed: list[str] = msgspec.field(default_factory=list)
    # The publish's rerate_in_contract (engine/commands.py); False in the snapshots of earlier releases, whose
    # publishes had none.
    in_contract: bool = False
    # The publish's rerate_holds_in_time (engine/commands.py); False in the snapshots of earlier releases, whose
    # publishes had none.
    holds_in_time: bool = False
    # The publish's rerate_top_ups_in_time (engine/commands.py); False in the snapshots of earlier releases, whose
    # publishes had none.
    top_ups_in_time: bool = False
    # The publish's rerate_carries_earlier_hours (engine/commands.py); False in the snapshots of earlier releases,
    # whose publishes had none.
    earlier_hours_carried: bool = False
    # The publish's rerate_counts_closed_events_once (engine/commands.py); False in the snapshots of earlier
    # releases, whose publishes had none.
    closed_events_once: bool = False
    # The publish's rerate_breaks_rolled_credit (engine/commands.py); False in the snapshots of earlier releases,
    # whose publishes had none.
    rolled_credit_breaks: bool = False
    # The publish's rerate_holds_off_final_grants (engine/commands.py); False in the snapshots of earlier
    # releases, whose publishes had none.
    holds_off_final_grants: bool = False
    # The publish's time, with holds_off_final_grants: the re-rating judges a grant's expiry final as of it.
    at_ms: int = 0
    # The publish's rerate_keeps_unchanged_draws (engine/commands.py); False in the snapshots of earlier
    # releases, whose publishes had none.
    unchanged_draws_kept: bool = False


def start(plan: RerationPlan, publish_seq: int) -> PendingRerating:
    return PendingRerating(
        publish_seq,
        plan.rate_card_id,
        plan.from_hour,
        list(plan.customers),
        dict.fromkeys(plan.customers),
        in_contract=plan.in_contract,
        holds_in_time=plan.holds_in_time,
        top_ups_in_time=plan.top_ups_in_time,
        earlier_hours_carried=plan.earlier_hours_carried,
        closed_events_once=plan.closed_events_once,
        rolled_credit_breaks=plan.rolled_credit_breaks,
        holds_off_final_grants=plan.holds_off_final_grants,
        at_ms=plan.at_ms,
        unchanged_draws_kept=plan.unchanged_draws_kept,
    )


def rerate(kernel: Kernel, rerating: PendingRerating, named: Iterable[str]) -> int:
    """Re-rates those of `named` still pending (re-rate on touch); returns how many."""
    customers = [customer for customer in named if customer in rerating.pending]
    _rerate(kernel, rerating, customers)
    return len(customers)


def rerate_next(kernel: Kernel, rerating: PendingRerating, limit: int) -> int:
    """Re-rates up to `limit` pending customers, the next in plan order (a background slice); returns how many."""
    customers: list[str] = []
    plan = rerating.customers
    while rerating.cursor < len(plan) and len(customers) < limit:
        customer = plan[rerating.cursor]
        rerating.cursor += 1
        if customer in rerating.pending:
            customers.append(customer)
    _rerate(kernel, rerating, customers)
    return len(customers)


def rerate_all(kernel: Kernel, rerating: PendingRerating) -> None:
    """Re-rates every customer still pending (the completion record)."""
    while rerate_next(kernel, rerating, len(rerating.customers)):
        pass


def _rerate(kernel: Kernel, rerating: PendingRerating, customers: list[str]) -> None:
    if not customers:
        return
    try:
        done = kernel.rerate(
            customers,
            rerating.rate_card_id,
            rerating.from_hour,
            rerating.publish_seq,
            rerating.in_contract,
            rerating.holds_in_time,
            rerating.top_ups_in_time,
            rerating.earlier_hours_carried,
            rerating.closed_events_once,
            rerating.rolled_credit_breaks,
            rerating.at_ms if rerating.holds_off_final_grants else None,
            rerating.unchanged_draws_kept,
        )
    except ValueError as exc:
        # The publish checked these customers' usage, and nothing changes it before they are re-rated.
        raise AssertionError(f"a pending re-rating failed although its publish was checked: {exc}") from exc
    for customer in customers:
        del rerating.pending[customer]
    rerating.changed += done[7]
    customers_so_far, buckets, events, delta_picos, closed_buckets, closed_events, closed_picos = rerating.done
    rerating.done = (
        customers_so_far + done[0],
        buckets + done[1],
        events + done[2],
        delta_picos + done[3],
        closed_buckets + done[4],
        closed_events + done[5],
        closed_picos + done[6],
    )
