"""A third audit of rate-card versions over time, over the wire (pricing.proto Rate and SimulateVersionRequest,
PublishVersionRequest.effective_from; README "Changing prices safely"): versions, cohorts, contract overrides and
switches, late events, closed periods, rollbacks, SimulateVersion, Authorize and PreviewInvoice combined. Every
amount asserted is computed by hand in the docstring, never read back from the server.

Catalogue of tests/test_audit_pricing_wire.py: product `units` (event type `work`, SUM of `n`, priced on model and
region), card `card` in USD, customer `c` with contract `k-c` from the hour its version 1 (UNIT 1) takes effect.
An event is charged price(the line's quantity after it) - price(before it) by the version in force at its
timestamp, never giving back more than its line was charged so far (pricing.proto, Rate)."""

from __future__ import annotations

from tests.serverproc import ServerFactory
from tests.test_audit_prices3_wire import counts, tiered
from tests.test_audit_pricing_wire import HOUR_MS, catalogue, charges, draft, ingest, publish, this_hour_ms, work
from tests.test_audit_versions2_wire import simulate

# VOLUME: up to 100 units at 2, beyond at 0.1 (price(80) = 160, price(120) = 12).
FALLING = [("100", "2", ""), ("", "0.1", "")]


def test_simulate_from_mid_period_answers_what_a_publish_from_that_hour_then_charges_where_volume_falls(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto SimulatedAmount: the simulated amount is each line walked from its period's start, its first
    hour in the window also carrying what the hours before were charged less than on time, "as a publish from the
    window's start carries them"; README: simulate first, then publish.

    s = h - 5h: the contract's start (the period's) and version 1's (UNIT 1). Usage on time: 80 units at s (80),
    40 at s+2h (40): charges 120. Draft v2: VOLUME up to 100 at 2, then 0.1.
    Publishing v2 from s+1h walks the period: s, before effective_from, is priced by v1 (80, what it was charged:
    nothing to carry); s+2h by v2 over the cumulative 80 -> 120: 12 - 160 = -148, but no charge gives back more
    than the line was charged so far (80): -80. The line is 0, delta -120 (1 customer, 1 bucket, 1 event).
    SimulateVersion of v2 over [s+1h, h+1h) must answer that: current 40, simulated -80, delta -120. (Walking the
    hour s by v2 as well, 160, the clamp would not bite and s+2h would be -148: neither what a publish from s+1h
    nor one from s charges, the latter re-rating s to 160 and the line to 12.)"""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        ingest(client, work("a", s + 1, 80), work("b", s + 2 * HOUR_MS + 1, 40))
        assert charges(client) == "120"
        v2 = draft(client, 1, [tiered(True, FALLING)])
        assert simulate(client, v2, s + HOUR_MS, hour + HOUR_MS) == [
            ("c", "units", "40", "-80", "-120"),
            ("total", "", "40", "-80", "-120"),
        ]
        assert counts(publish(client, v2, s + HOUR_MS)) == (1, 1, 1, "-120")
        assert charges(client) == "0"
