"""A long re-rating against a real server process, with usage arriving meanwhile (README, "Changing prices
safely"; engine/pending.py): the publish is journaled first and its re-rating runs after it, so usage sent while it
runs is acked before it completes; the amounts then equal rating every event from scratch at the new price, a
replay of the journal gives them again, and a `kill -9` in the middle loses nothing and re-rates nothing twice.
"""

from __future__ import annotations

import asyncio
import re
import threading
from decimal import Decimal

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess, wait_for_log
from tests.test_server_admin import HOUR_MS, ts
from tests.test_server_rerate import HOURS, PRICE_V1, PRICE_V2, ingest_many, quantity_of, set_up_many

# A re-rating of 3,000 customers x 150 hour buckets: a few hundred milliseconds here.
CUSTOMERS = 3_000
DONE = re.compile(r"re-rating done.*?buckets=(\d+).*?events=(\d+)")
# The publish's record and the re-rating's completion record, as the server logs them.
STARTED_SEQ = re.compile(r"re-rating started.*?seq=(\d+)")
DONE_RECORD = re.compile(r"re-rating done.*?record=(\d+)")
# The server pauses this long after each background slice of 64 customers (a test-only knob): the re-rating of
# 3,000 customers then lasts at least 47 x 40 ms, whatever the machine's speed or load.
PACED = {"TARIFF_TEST_RERATE_SLICE_PAUSE_MS": "40"}


def set_up(server: ServerProcess) -> tuple[int, pricing_pb2.PublishVersionRequest]:
    """CUSTOMERS customers with HOURS hours of usage at PRICE_V1, and the publish of PRICE_V2 over all of it."""
    now = now_ms()
    start_ms = now - now % HOUR_MS - (HOURS + 1) * HOUR_MS
    asyncio.run(set_up_many(server, start_ms, CUSTOMERS))
    with server.client() as client:
        ingest_many(client, start_ms, CUSTOMERS)
    return start_ms, pricing_pb2.PublishVersionRequest(rate_card_id="bulk", version=2, effective_from=ts(start_ms))


def publish_in_background(server: ServerProcess, request: pricing_pb2.PublishVersionRequest) -> threading.Thread:
    """Publishes from a thread's client (its answer comes once the re-rating is complete), kept in `answers`."""

    def publish() -> None:
        try:
            with server.client() as client:
                answers.append(client.pricing.PublishVersion(request, timeout=300))
        except Exception as exc:  # the server may be killed under it
            answers.append(exc)

    answers: list[object] = []
    caller = threading.Thread(target=publish)
    caller.answers = answers  # type: ignore[attr-defined]
    caller.start()
    return caller


def late_usage(client: TariffClient, start_ms: int, round_: int, extra: dict[int, int]) -> int:
    """A batch of late events (in hours the re-rating covers) for customers at the end, start and middle of the
    re-rating's order, acked; `extra` adds up what was sent per customer. Returns the ack's journal seq."""
    customers = [(CUSTOMERS - 1 - round_) % CUSTOMERS, round_ * 37 % CUSTOMERS, (CUSTOMERS // 2 + round_) % CUSTOMERS]
    events = []
    for n, customer in enumerate(dict.fromkeys(customers)):
        quantity = 1 + (round_ + n) % 3
        extra[customer] = extra.get(customer, 0) + quantity
        events.append(
            usage_pb2.UsageEvent(
                transaction_id=f"late-{round_}-{customer}",
                customer_id=f"c{customer:05d}",
                event_type="work",
                timestamp_ms=start_ms + (round_ % HOURS) * HOUR_MS + 120_000,
                values={"n": float(quantity)},
            )
        )
    ack = client.ingest_batch(events, batch_id=f"late-{round_}")
    assert ack.accepted == len(events), ack.rejected[:3]
    return int(ack.journal_seq)


def expected_charges(customer: int, extra: dict[int, int]) -> Decimal:
    """Every event of the customer rated from scratch at the new price."""
    return PRICE_V2 * (sum(quantity_of(customer, h) for h in range(HOURS)) + extra.get(customer, 0))


def assert_rated_from_scratch(client: TariffClient, extra: dict[int, int]) -> None:
    for customer in range(CUSTOMERS):
        charges = Decimal(client.get_balance(f"c{customer:05d}").period_charges)
        assert charges == expected_charges(customer, extra), customer


def assert_each_bucket_adjusted_once(client: TariffClient, start_ms: int, customers: list[int]) -> None:
    """The line's adjustments: one per hour bucket the publish covered, all citing the same publish."""
    for customer in customers:
        preview = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=f"c{customer:05d}", period_start=ts(start_ms))
        )
        [line] = preview.lines
        hours = [a.hour.ToMilliseconds() for a in line.adjustments]
        assert sorted(hours) == [start_ms + h * HOUR_MS for h in range(HOURS)], customer
        assert len({a.journal_seq for a in line.adjustments}) == 1
        assert {(a.old_amount, a.new_amount) for a in line.adjustments} == {
            (str(PRICE_V1 * q), str(PRICE_V2 * q)) for q in {quantity_of(customer, h) for h in range(HOURS)}
        }


def logged_seq(server: ServerProcess, pattern: re.Pattern[str]) -> int:
    """The journal seq the server's log line (matched by `pattern`, the seq its group) names."""
    [seq] = pattern.findall(server.log_path.read_text(errors="replace"))
    return int(seq)


def stream_late_usage(
    server: ServerProcess, start_ms: int, extra: dict[int, int], go: threading.Event, stop: threading.Event
) -> tuple[threading.Thread, list[int]]:
    """A client sending late usage batch after batch from `go` to `stop`; returns it and the acks' journal seqs."""
    acked_seqs: list[int] = []

    def stream() -> None:
        with server.client() as client:
            client.get_balance("c00000")  # connected before the publish
            go.wait()
            round_ = 0
            while not stop.is_set():
                acked_seqs.append(late_usage(client, start_ms, round_, extra))
                round_ += 1

    streamer = threading.Thread(target=stream)
    streamer.start()
    return streamer, acked_seqs


@pytest.mark.slow
def test_usage_is_acked_while_a_long_rerating_runs_and_amounts_equal_rating_from_scratch(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env=PACED)
    start_ms, request = set_up(server)
    extra: dict[int, int] = {}
    go, stop = threading.Event(), threading.Event()
    streamer, acked_seqs = stream_late_usage(server, start_ms, extra, go, stop)
    caller = publish_in_background(server, request)
    wait_for_log(server, "re-rating started", 60)
    go.set()  # every late batch is applied after the publish: its customers are re-rated first
    caller.join()
    stop.set()
    streamer.join()
    # Batches were acked while the re-rating ran: journaled (the journal is in order) after the publish's record
    # and before the re-rating's completion record, which the publish's answer waited for.
    published, completed = logged_seq(server, STARTED_SEQ), logged_seq(server, DONE_RECORD)
    assert [seq for seq in acked_seqs if published < seq < completed], (published, completed, acked_seqs[:5])
    [done] = caller.answers  # type: ignore[attr-defined]
    assert isinstance(done, pricing_pb2.PublishVersionResponse), done
    # Every bucket the publish covered, once: the late events were rated at the new price after their customer.
    assert (done.customers_rerated, done.buckets_rerated, done.events_rerated) == (
        CUSTOMERS,
        CUSTOMERS * HOURS,
        CUSTOMERS * HOURS,
    )
    total = PRICE_V1 * sum(quantity_of(c, h) for c in range(CUSTOMERS) for h in range(HOURS))
    assert Decimal(done.rerated_amount_delta) == total * (PRICE_V2 - PRICE_V1) / PRICE_V1
    with server.client() as client:
        assert_rated_from_scratch(client, extra)
        assert_each_bucket_adjusted_once(client, start_ms, [CUSTOMERS - 1, 0, CUSTOMERS // 2, 5])
    # A replay of the journal (kill -9: no snapshot at shutdown) gives the same.
    server.kill9()
    server.restart()
    with server.client() as client:
        assert_rated_from_scratch(client, extra)
        assert_each_bucket_adjusted_once(client, start_ms, [CUSTOMERS - 1, 0])


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_long_rerating_loses_nothing_and_rerates_nothing_twice(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env=PACED)  # so that the kill comes before the re-rating completes
    start_ms, request = set_up(server)
    extra: dict[int, int] = {}
    with server.client() as client:
        client.get_balance("c00000")  # connected before the publish
        caller = publish_in_background(server, request)
        wait_for_log(server, "re-rating started", 60)
        late_usage(client, start_ms, 0, extra)  # acked: the publish before it is durable
        server.kill9()
    caller.join()
    assert not isinstance(caller.answers[0], pricing_pb2.PublishVersionResponse)  # type: ignore[attr-defined]
    assert "re-rating done" not in server.log_path.read_text(errors="replace"), "make the re-rating longer"

    # The restart replays the publish, leaving its re-rating pending (the acked batch re-rated the customers it
    # named first), and the writer completes it: once, every bucket, none twice.
    server.restart()
    wait_for_log(server, "re-rating done", 120)
    [(buckets, events)] = DONE.findall(server.log_path.read_text(errors="replace"))
    assert (int(buckets), int(events)) == (CUSTOMERS * HOURS, CUSTOMERS * HOURS)
    with server.client() as client:
        version = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="bulk", version=2))
        assert version.state == pricing_pb2.PUBLISHED
        assert_rated_from_scratch(client, extra)  # what the run without a crash gives
        assert_each_bucket_adjusted_once(client, start_ms, [CUSTOMERS - 1, 0, CUSTOMERS // 2, 7])
        # The caller never had an answer: its retry is answered as committed, re-rating nothing again.
        again = client.pricing.PublishVersion(request)
        assert (again.events_rerated, again.buckets_rerated) == (0, 0)
        late_usage(client, start_ms, 1, extra)
        assert_rated_from_scratch(client, extra)
    server.terminate()
