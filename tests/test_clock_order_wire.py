"""The clock's work (AdvanceClock: holds expiring, grants expiring and rolling over at a period's end) against the
commands around it, over the wire against a real server: a command applied after the instant something fell due
finds it done, in journal order, whatever the writer was busy with meanwhile (docs/architecture.md §3 "Time", §5
"Re-rating and simulation", §6 "Invoices"), and a replay of the journal gives the same.

The catalogue of tests/test_audit_credits_wire.py (`units`, 1 credit a unit, on rate card `card`), and a second rate
card `bulk` (1 credit a unit, then 2) for BULK customers with one event each: publishing its version 2 over that
event re-rates them all, in background slices of 64 customers after the publish is journaled, paced by
TARIFF_TEST_RERATE_SLICE_PAUSE_MS (a test-only knob: the re-rating then lasts at least 3 x PAUSE_MS, whatever the
machine's speed), while admin commands other than holds and the clock queue behind it."""

from __future__ import annotations

import asyncio
import threading
import time

from tariff import now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview
from tests.serverproc import ServerFactory, ServerProcess, wait_for_log
from tests.test_audit_credits_wire import (
    CARD_FROM_MS,
    HOUR_MS,
    catalogue,
    customer,
    grant,
    grants_of,
    period_anchor_ms,
    work,
)
from tests.test_audit_periods3_wire import but_final_fields, close

BULK = 200  # 4 slices of the re-rating: 3 pauses
PAUSE_MS = 3000
PACED = {"TARIFF_TEST_RERATE_SLICE_PAUSE_MS": str(PAUSE_MS)}


async def _bulk_customers(server: ServerProcess) -> None:
    async with server.async_client() as client:
        ids = [f"b{n:03d}" for n in range(BULK)]
        await asyncio.gather(
            *(client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=i, name=i)) for i in ids)
        )
        await asyncio.gather(
            *(
                client.contracts.CreateContract(
                    contracts_pb2.CreateContractRequest(
                        id=f"k-{i}", customer_id=i, rate_card_id="bulk", starting_at=stamp(CARD_FROM_MS)
                    )
                )
                for i in ids
            )
        )


def bulk_card(server: ServerProcess) -> pricing_pb2.PublishVersionRequest:
    """Rate card `bulk` and its BULK customers, one unit each two hours ago; returns the publish of its version 2
    from that hour, which re-rates every one of them."""
    with server.client() as client:
        pricing = client.pricing
        pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="bulk", pricing_unit="credits"))
        for price in ("1", "2"):
            rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=price))
            pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="bulk", upsert_rates=[rate]))
        pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="bulk", version=1, effective_from=stamp(CARD_FROM_MS))
        )
    asyncio.run(_bulk_customers(server))
    hour_ms = now_ms() // HOUR_MS * HOUR_MS - 2 * HOUR_MS
    with server.client() as client:
        events = [work(f"b{n}", f"b{n:03d}", 1, hour_ms + 60_000) for n in range(BULK)]
        assert client.ingest_batch(events).accepted == BULK
    return pricing_pb2.PublishVersionRequest(rate_card_id="bulk", version=2, effective_from=stamp(hour_ms))


def publish_in_background(server: ServerProcess, request: pricing_pb2.PublishVersionRequest) -> threading.Thread:
    """Publishes from a thread (answered once the re-rating completes); its answer or error in `answers`."""
    answers: list[object] = []

    def publish() -> None:
        try:
            with server.client() as client:
                answers.append(client.pricing.PublishVersion(request, timeout=300))
        except Exception as exc:
            answers.append(exc)

    caller = threading.Thread(target=publish)
    caller.answers = answers  # type: ignore[attr-defined]
    caller.start()
    return caller


def sleep_until(at_ms: int) -> None:
    while now_ms() < at_ms:
        time.sleep(0.02)


def balance_of(invoice: invoices_pb2.Invoice, grant_id: str) -> tuple[str, str, str, str]:
    [found] = [g for g in invoice.grant_balances if g.grant_id == grant_id]
    return found.granted, found.drawn, found.remaining, found.expired


def rollover_due_during_a_rerating(server: ServerProcess) -> tuple[int, int, threading.Thread]:
    """Customer `x`, its period ending at END (about 5 s from now), grant R of 10 credits with rollover fraction 0.5
    and 4 units drawn from it; a publish of `bulk` whose re-rating starts before END and is still running 300 ms
    after it. Returns (the period's start, END, the publish's thread)."""
    start_ms, end_ms, caller, _ = rerating_before_a_period_end(server)
    sleep_until(end_ms + 300)
    assert caller.is_alive(), "the scenario needs the re-rating still running after the period's end"
    return start_ms, end_ms, caller


def rerating_before_a_period_end(server: ServerProcess) -> tuple[int, int, threading.Thread, int]:
    """Customer `x`, its period ending at END (about 5 s from now), grant R of 10 credits with rollover fraction 0.5
    and 4 units drawn from it; a publish of `bulk` whose re-rating starts before END. Returns (the period's start,
    END, the publish's thread, the time the publish was sent)."""
    with server.client() as client:
        catalogue(client)
    request = bulk_card(server)
    end_ms = (now_ms() // 1000 + 5) * 1000
    start_ms = period_anchor_ms(end_ms)
    with server.client() as client:
        customer(client, "x", starting_at_ms=start_ms)
        grant(client, "x", "R", "10", starts_at_ms=now_ms() - 1000, rollover_fraction="0.5")
        assert client.ingest_batch([work("x4", "x", 4, now_ms())]).accepted == 1
        published_ms = now_ms()
        caller = publish_in_background(server, request)
        wait_for_log(server, "re-rating started", 30)
        assert now_ms() < end_ms, "the scenario needs the re-rating under way before the period's end"
    return start_ms, end_ms, caller, published_ms


def test_a_close_queued_behind_a_rerating_finds_the_rollover_its_period_end_made_due(
    server_factory: ServerFactory,
) -> None:
    """`x`: a period ending at END, about 5 s from now; grant R of 10 credits with rollover fraction 0.5, 4 units
    drawn from it before END. A publish on another card starts a long re-rating before END; END passes while it
    runs and the writer sleeps the test's pause, so no rollover is recorded yet (beside a pending re-rating the
    clock records none: the clock driver's look after END, queued meanwhile, completes the re-rating first, §5).
    The draft of x's period read then shows R as closing will: 4 drawn + 3 rolled = 7 drawn, 0 remaining, 3 broken.
    ClosePeriod for it, sent then, waits behind that look and applies once the re-rating completed: the rollover
    due since END must be recorded before it (its AdvanceClock first), so the final invoice equals that draft but
    for number, status and
    close time (not R with 6 remaining, the rollover recorded only after the period was closed). The journal
    replayed (kill -9, restart) gives the same invoice and grants."""
    server = server_factory(env=PACED)
    start_ms, end_ms, caller = rollover_due_during_a_rerating(server)
    with server.client() as client:
        # The rollover is not recorded yet (beside the pending re-rating), but a read answers as the clock will
        # record it (README "Rollover"): 4 drawn + 3 rolled = 7 drawn, 3 broken.
        assert grants_of(client, "x")["R"] == ("7", "0", "0", "3", "0")
        draft = preview(client, "x", start_ms)
        assert balance_of(draft, "R") == ("10", "7", "0", "3")
        final = close(client, "x", start_ms)
        assert final.status == invoices_pb2.INVOICE_FINAL
        assert balance_of(final, "R") == ("10", "7", "0", "3")
        assert but_final_fields(final) == but_final_fields(draft)
        caller.join()
        [published] = caller.answers  # type: ignore[attr-defined]
        assert isinstance(published, pricing_pb2.PublishVersionResponse), published
        assert published.customers_rerated == BULK
        rolled = f"rollover-R-{end_ms}"
        grants = grants_of(client, "x")
        assert (grants["R"], grants[rolled]) == (("7", "0", "0", "3", "0"), ("0", "3", "0", "0", "0"))
    server.kill9()
    server.restart()
    with server.client() as client:
        assert client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number)) == final
        assert grants_of(client, "x") == grants


def test_usage_after_a_period_end_during_a_rerating_draws_the_rollover_that_end_made_due(
    server_factory: ServerFactory,
) -> None:
    """`x` as above: a period ending at END; grant R of 10 credits with rollover fraction 0.5, 4 units drawn from it
    before END, so END rolls floor(0.5 x 6) = 3 credits into ROLLOVER grant `rollover-R-END` and breaks the other 3.
    A publish on another card starts a long re-rating before END; END passes while it runs; then a batch of 2 units
    dated after END arrives, the re-rating still pending (the writer sleeping the test's pause). R's credit is usable
    only before its rollover, so the batch must find the rollover recorded (the re-rating completed at once, then
    the clock's AdvanceClock, by the clock driver's look queued before the batch or else before the batch: §5;
    tests/test_sequencer_clock_order.py has the batch's own case exact): it draws 2
    of the 3 rolled credits, 1 remaining, and nothing is overage (not 2 units of overage, the 3 rolled credits left
    for later usage). The closed period's final invoice shows R as the draft read before the batch did (7 drawn,
    3 broken), and the journal replayed (kill -9, restart) gives the same invoice, grants and balance."""
    server = server_factory(env=PACED)
    start_ms, end_ms, caller = rollover_due_during_a_rerating(server)
    rolled = f"rollover-R-{end_ms}"
    with server.client() as client:
        before = preview(client, "x", start_ms)
        assert balance_of(before, "R") == ("10", "7", "0", "3")
        assert client.ingest_batch([work("x2", "x", 2, now_ms())]).accepted == 1
        balance = client.get_balance("x")
        assert (balance.period_charges, balance.overage_amount, balance.credits_remaining) == ("2", "0", "1")
        grants = grants_of(client, "x")
        assert grants == {"R": ("7", "0", "0", "3", "0"), rolled: ("2", "1", "0", "0", "0")}
        # Read again: the hour holding END counts the batch in this period's version parts (README "Invoices").
        draft = preview(client, "x", start_ms)
        final = close(client, "x", start_ms)
        assert final.status == invoices_pb2.INVOICE_FINAL
        assert balance_of(final, "R") == balance_of(before, "R")
        assert but_final_fields(final) == but_final_fields(draft)
        caller.join()
        [published] = caller.answers  # type: ignore[attr-defined]
        assert isinstance(published, pricing_pb2.PublishVersionResponse), published
        assert published.customers_rerated == BULK
        assert grants_of(client, "x") == grants
    server.kill9()
    server.restart()
    with server.client() as client:
        assert client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number)) == final
        assert grants_of(client, "x") == grants
        again = client.get_balance("x")
        assert (again.period_charges, again.overage_amount, again.credits_remaining) == ("2", "0", "1")


# Slower than PAUSE_MS: the publish's first pause outlasts END, so the driver's look after END is taken as the writer
# wakes from it (the writer sleeps the pause), about 2 x PAUSE_MS before the paced re-rating could complete.
LONG_PAUSE_MS = 6000


def test_with_no_usage_the_clock_drivers_look_after_a_period_end_completes_a_rerating_and_rolls_the_credit_over(
    server_factory: ServerFactory,
) -> None:
    """`x` as above: a period ending at END; grant R of 10 credits with rollover fraction 0.5, 4 units drawn from it
    before END, so END rolls floor(0.5 x 6) = 3 credits into ROLLOVER grant `rollover-R-END` and breaks the other
    3. A publish on another card starts a re-rating before END, paced to last at least 3 x LONG_PAUSE_MS from its
    send. END passes; no usage, no admin command, only reads. The clock driver's look finds the rollover due and
    the writer completes the re-rating at once, then records it (§5): GetBalance shows R drawn 4 + 3 rolled = 7,
    0 remaining, 3 broken, and the rolled grant's 3 credits (credits_remaining 3) long before the paced re-rating
    would have completed; the publish is answered with it. Authorize of 2 units after END may use them: allowed OK,
    cost 2, credits_available 3 (R is usable only before its rollover, so without the rolled grant: 0, overage),
    and a hold of 2 takes them from the rolled grant (1 available after it). The journal replayed (kill -9,
    restart) gives the same balance, grants and hold."""
    server = server_factory(env={"TARIFF_TEST_RERATE_SLICE_PAUSE_MS": str(LONG_PAUSE_MS)})
    _, end_ms, caller, published_ms = rerating_before_a_period_end(server)
    rolled = f"rollover-R-{end_ms}"
    paced_end_ms = published_ms + 3 * LONG_PAUSE_MS  # the paced re-rating cannot have completed before
    sleep_until(end_ms)
    with server.client() as client:
        while rolled not in grants_of(client, "x"):
            assert now_ms() < paced_end_ms - 1000, "the rollover waited for the paced re-rating to complete"
            time.sleep(0.02)
        grants = grants_of(client, "x")
        assert grants == {"R": ("7", "0", "0", "3", "0"), rolled: ("0", "3", "0", "0", "0")}
        balance = client.get_balance("x")
        assert (balance.credits_remaining, balance.credits_available, balance.overage_amount) == ("3", "3", "0")
        decision = client.authorize("x", "work", values={"n": 2})
        assert (decision.allowed, decision.reason, decision.estimated_cost) == (True, "OK", "2")
        assert decision.credits_available == "3"
        held = client.authorize("x", "work", values={"n": 2}, reserve=True, reservation_ttl_s=600, reservation_id="h")
        assert (held.allowed, held.reason, held.credits_available) == (True, "OK", "1")
        grants = grants_of(client, "x")
        assert grants[rolled] == ("0", "3", "2", "0", "0")
        balance = client.get_balance("x")
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("3", "2", "1")
        caller.join()
        [published] = caller.answers  # type: ignore[attr-defined]
        assert isinstance(published, pricing_pb2.PublishVersionResponse), published
        assert published.customers_rerated == BULK
    server.kill9()
    server.restart()
    with server.client() as client:
        assert grants_of(client, "x") == grants
        again = client.get_balance("x")
        assert (again.credits_remaining, again.credits_held, again.credits_available) == ("3", "2", "1")
        assert again.overage_amount == "0"
