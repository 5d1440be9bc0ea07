"""A `kill -9` in the middle of a long cohort re-rating, against a real server process: nothing lost, nothing
re-rated twice (README, "Changing prices safely", "Cohorts"; docs/architecture.md §5, "Re-rating and simulation").

Written against the observable contract only (the RPCs, the final amounts, the invoice lines' adjustments, the
audit log), not against how the server schedules the re-rating: it holds whether the publish is journaled once
the re-rating is done (the crash then leaves nothing of it and the caller's retry publishes) or journaled first
and re-rated afterwards (the restart then finishes it and the retry is answered as the committed publish). Usage
sent while the re-rating runs may be acknowledged or not before the crash; resent afterwards (the same
transaction ids), it is counted once either way. The final amounts must be exactly what the same story gives
without a crash, computed here by hand: a cohort member's usage at version 2's prices, everyone else's at
version 1's, each customer's grant drawn first and the rest overage.
"""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal

import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess, wait_for_log
from tests.test_server_admin import HOUR_MS, ms_of, ts

CUSTOMERS = 2_000
# Usage hours, each customer one event an hour feeding two products: 640,000 hour buckets, 480,000 of them the
# cohort's (re-rating runs at about 2 M buckets/s on the development machine: the kill must come before it ends).
HOURS = 160
PRICES = {1: {"units": Decimal(1), "calls": Decimal("0.5")}, 2: {"units": Decimal(2), "calls": Decimal("0.25")}}
LATE = range(3, CUSTOMERS, 37)  # customers sent one more event (hour HOURS) while the re-rating runs
COHORT = pricing_pb2.Cohort(attributes={"tier": "gold"})


def customer_id(c: int) -> str:
    return f"c{c:05d}"


def gold(c: int) -> bool:
    return c % 4 != 0


def quantity_of(c: int, hour: int) -> int:
    return 1 + (c * 7 + hour * 3) % 5


def grant_of(c: int) -> Decimal:
    """1.5 credits a unit of the customer's regular usage: version 1 leaves some, version 2 runs into overage."""
    return Decimal("1.5") * sum(quantity_of(c, h) for h in range(HOURS))


def usage_of(c: int) -> tuple[int, int]:
    """(units, events) of the customer's whole usage, the late event included."""
    units = sum(quantity_of(c, h) for h in range(HOURS + (c in LATE)))
    return units, HOURS + (c in LATE)


def expected_balance(c: int) -> tuple[Decimal, Decimal, Decimal]:
    """(period charges, overage, grant remaining) after the publish, with or without a crash."""
    prices = PRICES[2 if gold(c) else 1]
    units, events = usage_of(c)
    charges = prices["units"] * units + prices["calls"] * events
    drawn = min(charges, grant_of(c))
    return charges, charges - drawn, grant_of(c) - drawn


def event(c: int, hour: int, start_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=f"u{c}-{hour}",
        customer_id=customer_id(c),
        event_type="work",
        timestamp_ms=start_ms + hour * HOUR_MS + 60_000,
        values={"n": float(quantity_of(c, hour))},
    )


def rate(product_id: str, price: Decimal) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=str(price)))


async def set_up(server: ServerProcess, start_ms: int) -> None:
    """Two products fed by one event type, the card with version 1 published from start_ms and version 2 drafted,
    and CUSTOMERS customers (three in four tier gold), each with a contract and a prepaid grant."""
    async with server.async_client() as client:
        for product in (
            pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n", unit="u"),
            pricing_pb2.Product(id="calls", event_type="work", aggregation=pricing_pb2.COUNT, unit="calls"),
        ):
            await client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        await client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="bulk", pricing_unit="credits"))
        for number in (1, 2):
            rates = [rate(product, price) for product, price in PRICES[number].items()]
            await client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="bulk", upsert_rates=rates)
            )
        await client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="bulk", version=1, effective_from=ts(start_ms))
        )
        for first in range(0, CUSTOMERS, 200):
            batch = range(first, min(first + 200, CUSTOMERS))
            await asyncio.gather(
                *(
                    client.contracts.CreateCustomer(
                        contracts_pb2.CreateCustomerRequest(
                            id=customer_id(c), name=customer_id(c), attributes={"tier": "gold" if gold(c) else "blue"}
                        )
                    )
                    for c in batch
                )
            )
            await asyncio.gather(
                *(
                    client.contracts.CreateContract(
                        contracts_pb2.CreateContractRequest(
                            id=f"k{c}",
                            customer_id=customer_id(c),
                            rate_card_id="bulk",
                            starting_at=ts(start_ms),
                            overage_policy=contracts_pb2.ALLOW,
                            currency="USD",
                        )
                    )
                    for c in batch
                )
            )
            grants = (
                contracts_pb2.Grant(
                    id=f"g{c}",
                    contract_id=f"k{c}",
                    kind=contracts_pb2.PREPAID,
                    amount=str(grant_of(c)),
                    starts_at=ts(start_ms),
                )
                for c in batch
            )
            await asyncio.gather(
                *(client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=g)) for g in grants)
            )


def ingest_regular_usage(client: TariffClient, start_ms: int) -> None:
    events = [event(c, h, start_ms) for h in range(HOURS) for c in range(CUSTOMERS)]
    for first in range(0, len(events), 10_000):
        ack = client.ingest_batch(events[first : first + 10_000], batch_id=f"regular-{first}")
        assert ack.accepted == len(events[first : first + 10_000]), ack.rejected[:3]


def balances(client: TariffClient) -> dict[int, tuple[Decimal, Decimal, Decimal]]:
    out = {}
    for c in range(CUSTOMERS):
        balance = client.get_balance(customer_id(c))
        (grant,) = balance.grants
        out[c] = (Decimal(balance.period_charges), Decimal(balance.overage_amount), Decimal(grant.remaining))
    return out


def wait_for_balances(client: TariffClient, expected: dict[int, tuple[Decimal, Decimal, Decimal]]) -> None:
    """The balances reach the expected ones (at once when the publish's answer came after its re-rating; a
    server re-rating after journaling the publish may still be at it), then must equal them."""
    deadline = time.monotonic() + 180
    found = balances(client)
    while found != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        found = balances(client)
    wrong = {c: (found[c], expected[c]) for c in expected if found[c] != expected[c]}
    assert not wrong, f"{len(wrong)} customers differ, (found, expected): {list(wrong.items())[:5]}"


def check_adjustments(client: TariffClient, c: int, start_ms: int, publish_seq: int) -> None:
    """A member's every regular hour bucket of each product re-rated exactly once, by the publish (version 1 ->
    2), and nothing else re-rated; a customer outside the cohort has no adjustment."""
    invoice = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id(c)))
    lines = {line.product_id: line for line in invoice.lines}
    assert set(lines) == {"units", "calls"}
    units, events = usage_of(c)
    for product_id, line in lines.items():
        assert Decimal(line.quantity) == (units if product_id == "units" else events)
        assert line.events == events
        if not gold(c):
            assert list(line.adjustments) == [], f"{customer_id(c)} is outside the cohort"
            continue
        hours = [(ms_of(a.hour) - start_ms) // HOUR_MS for a in line.adjustments]
        assert sorted(h for h in hours if h < HOURS) == list(range(HOURS)), "each regular bucket re-rated once"
        # The late event's bucket: re-rated at most once, when it was rated before the new timeline took over.
        assert hours.count(HOURS) <= 1 and set(hours) <= set(range(HOURS + 1))
        assert {a.journal_seq for a in line.adjustments} == {publish_seq}
        assert {(tuple(a.old_versions), a.new_version) for a in line.adjustments} == {((1,), 2)}
        for adjustment, hour in zip(line.adjustments, hours, strict=True):
            quantity = quantity_of(c, hour) if product_id == "units" else 1
            assert Decimal(adjustment.old_amount) == PRICES[1][product_id] * quantity
            assert Decimal(adjustment.new_amount) == PRICES[2][product_id] * quantity


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_cohort_rerating_loses_nothing_and_rerates_nothing_twice(
    server_factory: ServerFactory,
) -> None:
    # The test-only pause between re-rating slices (24 slices of the 1,500 members) makes the re-rating last a
    # second at least: without it a busy machine saw the log line and killed after the re-rating was done.
    server = server_factory(env={"TARIFF_TEST_RERATE_SLICE_PAUSE_MS": "40"})
    now = now_ms()
    start_ms = now - now % HOUR_MS - (HOURS + 2) * HOUR_MS
    asyncio.run(set_up(server, start_ms))
    with server.client() as client:
        ingest_regular_usage(client, start_ms)
    publish = pricing_pb2.PublishVersionRequest(
        rate_card_id="bulk", version=2, effective_from=ts(start_ms), cohort=COHORT
    )
    late = [event(c, HOURS, start_ms) for c in LATE]
    acked: list[usage_pb2.IngestAck] = []

    def call_publish() -> None:
        try:
            with server.client() as client:
                client.pricing.PublishVersion(publish, timeout=300)
        except TariffError:  # the server dies under it: no answer is expected
            pass

    def send_late_usage() -> None:
        try:
            with server.client() as client:
                acked.append(client.ingest_batch(late, batch_id="late"))
        except TariffError:  # not acknowledged before the crash: resent below
            pass

    publisher = threading.Thread(target=call_publish)
    publisher.start()
    wait_for_log(server, "re-rating started", 120)
    sender = threading.Thread(target=send_late_usage)
    sender.start()
    time.sleep(0.01)  # the late batch reaches the server while the re-rating runs
    server.kill9()
    publisher.join()
    sender.join()
    assert "re-rating done" not in server.log_path.read_text(errors="replace"), "the kill came too late"

    server.restart()
    expected = {c: expected_balance(c) for c in range(CUSTOMERS)}
    with server.client() as client:
        # The caller retries the publish it got no answer to, and resends the usage it got no ack for.
        retried = client.pricing.PublishVersion(publish, timeout=300)
        assert retried.version.state == pricing_pb2.PUBLISHED
        assert dict(retried.version.cohort.attributes) == {"tier": "gold"}
        resent = client.ingest_batch(late, batch_id="late")
        assert resent.accepted + resent.duplicates == len(late) and not resent.rejected
        if acked:  # acknowledged before the crash: never lost, so the resend is all duplicates
            assert (acked[0].accepted, resent.duplicates) == (len(late), len(late))
        wait_for_balances(client, expected)

        # The publish applied once: one version 2, one audit entry for it, its seq cited by every adjustment.
        versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="bulk")).versions
        assert [(v.version, v.state, ms_of(v.effective_from)) for v in versions] == [
            (1, pricing_pb2.PUBLISHED, start_ms),
            (2, pricing_pb2.PUBLISHED, start_ms),
        ]
        audit = client.pricing.GetAuditLog(
            pricing_pb2.GetAuditLogRequest(target="rate_card/bulk/version/2", action="PublishVersion")
        ).entries
        assert len(audit) == 1, [(e.seq, e.action, e.target) for e in audit]
        for c in (0, 1, 2, 3, 4, 40, 77, CUSTOMERS // 2, CUSTOMERS - 2, CUSTOMERS - 1):  # 3, 40, 77: late usage
            check_adjustments(client, c, start_ms, audit[0].seq)
        # A further retry changes nothing.
        again = client.pricing.PublishVersion(publish)
        assert (again.customers_rerated, again.buckets_rerated, again.events_rerated) == (0, 0, 0)

    # A clean restart replays the committed publish once: the same amounts.
    server.terminate()
    server.restart()
    with server.client() as client:
        assert balances(client) == expected
