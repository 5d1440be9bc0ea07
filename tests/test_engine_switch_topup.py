"""A top-up policy across a switch to a contract in another currency, in the engine as the server's writer drives
it (engine.billing.Billing), each scenario replayed from its record: a SetTopUpPolicy the server made
(`price_in_contract_currency`) buys only in periods of contracts in the currency of the contract it was set
through; one recorded by an earlier release (no field) buys in every contract's periods, as it did."""

from __future__ import annotations

import pytest

from engine import commands as cmd
from engine.contracts import OveragePolicy
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, basic_world, picos

DAY_MS = 24 * HOUR_MS
SWITCH_MS = EPOCH_MS + 10 * DAY_MS  # c-acme (USD) from 2026-01-01 until 2026-01-11, then c-yen (JPY)


def switched() -> Ledger:
    """acme: 1 credit a token, c-acme in USD until SWITCH_MS, then c-yen in JPY; a grant "g" of 10 (paid 10)."""
    world = basic_world(contract_end_ms=SWITCH_MS)
    world.apply(
        cmd.CreateContract(EPOCH_MS, ACTOR, "c-yen", "acme", "card", SWITCH_MS, None, OveragePolicy.ALLOW, "150", "JPY")
    )
    world.grant("g", "10", paid="10")
    return Ledger(world)


@pytest.mark.parametrize("server_set", [False, True])
def test_a_policy_set_in_usd_buys_in_a_jpy_contracts_period_only_when_recorded_by_an_earlier_release(
    server_set: bool,
) -> None:
    """The policy (below 5 back to 10 at 0.9) set through c-acme (USD). 6 used in c-yen's first period leaves 4:
    an earlier release's record buys 6 there at 0.9 (cost 5.4, read as JPY); the server's record buys nothing
    (0.9 USD is no JPY price), and the 4 stay available. Either replays to the same kernel state."""
    m = switched()
    m.run(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "5", "10", "0.9", 2, price_in_contract_currency=server_set))
    at_ms = SWITCH_MS + HOUR_MS
    assert m.ingest([event("t1", at_ms, 6)], at_ms + 1, top_ups_in_billed_period=True).accepted == 1
    purchases = [(p[0], p[2], p[4]) for p in m.billing.kernel.top_up_purchases("acme")]
    assert purchases == ([] if server_set else [(SWITCH_MS, picos("6"), picos("6") * 9 * 10**17)])
    assert m.billing.balance("acme", at_ms + 2).available == picos("4" if server_set else "10")
    assert m.replayed().kernel.snapshot() == m.billing.kernel.snapshot()


def test_a_policy_set_again_through_the_jpy_contract_buys_there_and_no_longer_in_the_usd_one() -> None:
    """Set through c-acme at 0.9, then through c-yen at 135 (the server's records): 6 used on Jan 5 (c-acme's
    period) would buy under the USD policy, but it is JPY's now: nothing; 1 more used in c-yen's period (3 left)
    buys 7 there at 135 (cost 945). The same policy set again through c-yen changes nothing (no record)."""
    m = switched()
    m.run(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "5", "10", "0.9", 2, price_in_contract_currency=True))
    yen = cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-yen", "5", "10", "135", 2, price_in_contract_currency=True)
    m.run(yen)
    early, late = EPOCH_MS + 4 * DAY_MS, SWITCH_MS + HOUR_MS
    assert m.ingest([event("t1", early, 6)], late, top_ups_in_billed_period=True).accepted == 1
    assert m.billing.kernel.top_up_purchases("acme") == []
    assert m.ingest([event("t2", late, 1)], late + 1, top_ups_in_billed_period=True).accepted == 1
    purchases = [(p[0], p[2], p[4]) for p in m.billing.kernel.top_up_purchases("acme")]
    assert purchases == [(SWITCH_MS, picos("7"), picos("7") * 135 * 10**18)]
    records = len(m.records)
    m.run(yen)
    assert len(m.records) == records
    assert m.replayed().kernel.snapshot() == m.billing.kernel.snapshot()
