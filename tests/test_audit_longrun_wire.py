"""An audit of what a server meets after months in production, over the wire: the 35-day dedupe window at its
boundary and across restarts, a wall clock stepped back between restarts, and the journal's files over time.

The server's clock is moved in its own process only: a `sitecustomize` on its PYTHONPATH (written by `clock_env`)
replaces `time.time_ns`, the one wall clock the server reads (server/sequencer.py, server/clock.py,
server/services/common.py), by a frozen instant or the real clock plus an offset. Nothing of the server is changed.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory, ServerProcess

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WINDOW_MS = 35 * DAY_MS  # README "Limits and backpressure": 35 days from acceptance, fixed
# Everything priced and contracted from 120 days back: any clock a test gives the server is inside it.
START_MS = (time.time_ns() // 1_000_000 // DAY_MS - 120) * DAY_MS

SHIM = """
import os
import re
import threading
import time

_real_time_ns = time.time_ns
_frozen_ms = os.environ.get("TARIFF_TEST_CLOCK_FROZEN_MS")
_offset_ns = int(os.environ.get("TARIFF_TEST_CLOCK_OFFSET_MS", "0")) * 1_000_000
if _frozen_ms is not None:
    _frozen_ns = int(_frozen_ms) * 1_000_000
    time.time_ns = lambda: _frozen_ns
elif _offset_ns:
    time.time_ns = lambda: _real_time_ns() + _offset_ns
"""


def clock_env(tmp_path: Path, *, frozen_ms: int | None = None, offset_ms: int = 0) -> dict[str, str]:
    """The environment of a server whose wall clock is frozen at `frozen_ms`, or the real one plus `offset_ms`."""
    shim_dir = tmp_path / "clockshim"
    shim_dir.mkdir(exist_ok=True)
    (shim_dir / "sitecustomize.py").write_text(SHIM)
    env = {"PYTHONPATH": str(shim_dir)}
    if frozen_ms is not None:
        env["TARIFF_TEST_CLOCK_FROZEN_MS"] = str(frozen_ms)
    else:
        env["TARIFF_TEST_CLOCK_OFFSET_MS"] = str(offset_ms)
    return env


def catalogue(client: TariffClient, *customers: tuple[str, bool]) -> None:
    """`units` (event type `work`, SUM of `n`) at 1 credit a unit from START_MS; each customer (id, block) on it
    from START_MS with a grant `g` of 100 credits."""
    pricing = client.pricing
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(START_MS))
    )
    for customer_id, block in customers:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=f"k-{customer_id}",
                customer_id=customer_id,
                rate_card_id="card",
                starting_at=stamp(START_MS),
                overage_policy=contracts_pb2.BLOCK if block else contracts_pb2.ALLOW,
                overage_price="1",
                currency="USD",
            )
        )
        grant = contracts_pb2.Grant(
            id=f"{customer_id}.g", contract_id=f"k-{customer_id}", kind=contracts_pb2.PROMOTIONAL, amount="100"
        )
        grant.starts_at.CopyFrom(stamp(START_MS))
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def work(transaction_id: str, customer_id: str, n: int, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id=customer_id, event_type="work", timestamp_ms=at_ms, values={"n": n}
    )


def outcome(client: TariffClient, event: usage_pb2.UsageEvent) -> str:
    """The event's outcome in a batch of its own: ACCEPTED, DUPLICATE or its reject reason."""
    ack = client.ingest_batch([event])
    if ack.rejected:
        return usage_pb2.RejectReason.Name(ack.rejected[0].reason)
    assert ack.accepted + ack.duplicates == 1, ack
    return "ACCEPTED" if ack.accepted else "DUPLICATE"


def remaining(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).credits_remaining)


# ---------------------------------------------------------------------------------------------
# The dedupe window


def test_an_id_is_a_duplicate_until_35_days_after_its_acceptance_to_the_millisecond_across_restarts(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """README: "An identical resend within the 35-day window is counted as a duplicate ... The same id with
    different content is refused as DUPLICATE_CONFLICT ... Both answers are the same after a restart"; "A resend
    more than 35 days after the original is accepted again"; architecture.md §4: the window runs "35 days from
    acceptance: the receive time of the batch that accepted it".

    The server's clock frozen at T0: a (2 units) and b (3 units) accepted, 100 - 5 = 95 credits left. Started
    again (kill -9: the journal replayed) at T0 + 35 days - 1 ms: a and b resent are duplicates, a with 7 units a
    DUPLICATE_CONFLICT, 95 left. Stopped cleanly (a snapshot) and started at T0 + 35 days exactly: the window is
    over, a resent is accepted (93 left) and b with 7 units is accepted as new (86 left). Started again after
    kill -9 at the same instant (the snapshot, then the journal after it): a is a duplicate of its second
    acceptance, b's first content is now the conflict, 86 left."""
    t0_ms = time.time_ns() // 1_000_000 // 1000 * 1000
    at_ms = t0_ms - 1000
    a, b = work("a", "d", 2, at_ms), work("b", "d", 3, at_ms)
    a_other, b_other = work("a", "d", 7, at_ms), work("b", "d", 7, at_ms)
    server = server_factory(env=clock_env(tmp_path, frozen_ms=t0_ms))
    with server.client() as client:
        catalogue(client, ("d", False))
        assert [outcome(client, a), outcome(client, b)] == ["ACCEPTED", "ACCEPTED"]
        assert remaining(client, "d") == "95"
    server.kill9()
    server.env = clock_env(tmp_path, frozen_ms=t0_ms + WINDOW_MS - 1)
    server.restart()
    with server.client() as client:
        assert [outcome(client, a), outcome(client, b), outcome(client, a_other)] == [
            "DUPLICATE",
            "DUPLICATE",
            "DUPLICATE_CONFLICT",
        ]
        assert remaining(client, "d") == "95"
    assert server.terminate() == 0
    server.env = clock_env(tmp_path, frozen_ms=t0_ms + WINDOW_MS)
    server.restart()
    with server.client() as client:
        assert [outcome(client, a), outcome(client, b_other)] == ["ACCEPTED", "ACCEPTED"]
        assert remaining(client, "d") == "86"
    server.kill9()
    server.restart()
    with server.client() as client:
        assert [outcome(client, a), outcome(client, b_other), outcome(client, b)] == [
            "DUPLICATE",
            "DUPLICATE",
            "DUPLICATE_CONFLICT",
        ]
        assert remaining(client, "d") == "86"


# ---------------------------------------------------------------------------------------------
# A wall clock stepped back between restarts


def hold(client: TariffClient, customer_id: str, reservation_id: str, n: int, ttl_ms: int) -> str:
    """Authorize with reserve: the amount held (refusing to go on unless allowed)."""
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id,
        event_type="work",
        values={"n": n},
        reserve=True,
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=ttl_ms // 1000, nanos=ttl_ms % 1000 * 1_000_000),
    )
    answer = client.balance.Authorize(request)
    assert answer.allowed, answer
    return str(answer.estimated_cost)


def held(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).credits_held)


def release_refusal(client: TariffClient, customer_id: str, reservation_id: str) -> tuple[grpc.StatusCode, str]:
    request = balance_pb2.ReleaseReservationRequest(customer_id=customer_id, reservation_id=reservation_id)
    with pytest.raises(TariffError) as refused:
        client.balance.ReleaseReservation(request)
    return refused.value.code, refused.value.details


def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Whether `condition` holds within `timeout_s` (a generous bound for a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_hold_made_after_the_clock_stepped_back_expires_at_its_ttl(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """README "Credits and the gateway": "A hold ends at the instant it was made (the server's clock when it took
    the request ...) plus its TTL, and is expired from that instant on", a release then FAILED_PRECONDITION.

    Before: a hold h1 of 2 credits with a TTL of 1 s expires (the clock driver records it, the kernel's clock at
    that instant). The server restarts with its wall clock one hour behind (an NTP step, a VM restored). A hold
    h2 of 3 credits with a TTL of 1 s is made at the stepped-back clock; 1 s later it is expired: nothing held,
    its release refused as expired, 100 - 1 = 99 credits available (the 1 unit of event c, accepted before the
    step and a duplicate after it, though dated an hour ahead of the clock now), and the same after a kill -9 and
    a restart."""
    used = work("c", "h", 1, time.time_ns() // 1_000_000 - 1000)
    server = server_factory(env=clock_env(tmp_path, offset_ms=0))
    with server.client() as client:
        catalogue(client, ("h", True))
        assert outcome(client, used) == "ACCEPTED"
        assert hold(client, "h", "h1", 2, 1000) == "2"
        assert until(lambda: held(client, "h") == "0"), "h1 never expired"
        assert release_refusal(client, "h", "h1")[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert server.terminate() == 0
    server.env = clock_env(tmp_path, offset_ms=-HOUR_MS)
    server.restart()
    with server.client() as client:
        # Dated an hour ahead of the clock now, yet an identical resend of an accepted event: a duplicate.
        assert outcome(client, used) == "DUPLICATE"
        assert hold(client, "h", "h2", 3, 1000) == "3"
        assert until(lambda: held(client, "h") == "0"), "h2 is still held past its TTL"
        code, details = release_refusal(client, "h", "h2")
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert str(client.get_balance("h").credits_available) == "99"
    server.kill9()
    server.restart()
    with server.client() as client:
        assert held(client, "h") == "0"
        assert release_refusal(client, "h", "h2")[0] == grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------------------------------------
# The explain index's map filling up


def explain_code(client: TariffClient, customer_id: str, at_ms: int) -> grpc.StatusCode:
    """ExplainLineItem's status for the customer's first invoice line of the period holding `at_ms`."""
    invoice = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=stamp(at_ms))
    )
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=customer_id, period_start=invoice.period_start, line_id=invoice.lines[0].line_id, page_size=1
    )
    try:
        client.invoices.ExplainLineItem(request)
    except TariffError as refused:
        return refused.code
    return grpc.StatusCode.OK


def test_a_full_explain_index_stops_alone_explain_answers_unavailable_and_a_larger_map_brings_it_back(
    server_factory: ServerFactory,
) -> None:
    """The explain index is derived data in an LMDB map of its own, `--explain-map-mb` (default 64 GiB: "64 GiB holds
    about 270,000,000" events, server/explain_index.py): a server long in production fills it. Its log then says
    "the explain index stopped (ExplainLineItem answers UNAVAILABLE until a restart)", and README "The operator's
    log": "A server that refuses to start says why in one line". Here the map is 1 MiB and 100,000 events of 1 unit
    fill it: every batch is acknowledged, ExplainLineItem answers UNAVAILABLE (it was INTERNAL), and a restart serves
    (it died at every start with a MapFullError traceback, the replay filling the index again): 100 credits drawn,
    99,900 units of overage, a resent batch all duplicates, ExplainLineItem UNAVAILABLE again. README: restarted with
    a larger `--explain-map-mb`, the index catches up and ExplainLineItem answers again."""
    server = server_factory(extra_args=["--explain-map-mb", "1"])
    at_ms = time.time_ns() // 1_000_000 - 1000
    batches = [[work(f"x{b}-{i}", "x", 1, at_ms) for i in range(10_000)] for b in range(10)]
    with server.client() as client:
        catalogue(client, ("x", False))
        for batch in batches:
            assert client.ingest_batch(batch).accepted == 10_000
        assert until(lambda: explain_code(client, "x", at_ms) == grpc.StatusCode.UNAVAILABLE)
    server.kill9()
    server.restart()
    with server.client() as client:
        balance = client.get_balance("x")
        assert (str(balance.credits_remaining), str(balance.period_charges)) == ("0", "100000")
        again = client.ingest_batch(batches[3])
        assert (again.accepted, again.duplicates) == (0, 10_000)
        assert explain_code(client, "x", at_ms) == grpc.StatusCode.UNAVAILABLE
    assert server.terminate() == 0
    server.extra_args = ("--explain-map-mb", "64")
    server.restart()
    with server.client() as client:
        assert explain_code(client, "x", at_ms) == grpc.StatusCode.OK
        assert str(client.get_balance("x").period_charges) == "100000"


# ---------------------------------------------------------------------------------------------
# The journal's files over time


def journal_files(server: ServerProcess) -> tuple[int, list[str]]:
    """(how many dedupe segments, the other files) in the data directory's journal/."""
    names = sorted(path.name for path in (server.data_dir / "journal").iterdir())
    segments = [name for name in names if name.startswith("segment.")]
    return len(segments), [name for name in names if not name.startswith("segment.")]


def test_snapshots_replace_one_another_and_the_dedupe_segments_stay_few_over_many_snapshots(
    server_factory: ServerFactory,
) -> None:
    """README "The data directory": journal/ holds data.mdb, lock.mdb, "the newest snapshot, `snapshot`; the dedupe
    segments it lists, `segment.<number>`"; architecture.md §4: a snapshot replaces the previous one, and once there
    are more than 8 segments the newest merge (files no snapshot lists are deleted at the next open). A snapshot
    after every record (`--snapshot-every 1 --snapshot-journal-factor 0`) and 40 batches of new ids: one snapshot
    file, at most 9 segments, nothing else, and the same after a clean stop and a start; every id still a
    duplicate."""
    server = server_factory(extra_args=["--snapshot-every", "1", "--snapshot-journal-factor", "0"])
    at_ms = time.time_ns() // 1_000_000 - 1000
    with server.client() as client:
        catalogue(client, ("s", False))
        for b in range(40):
            assert client.ingest_batch([work(f"s{b}-{i}", "s", 1, at_ms) for i in range(10)]).accepted == 10
    assert server.terminate() == 0
    segments, others = journal_files(server)
    assert others == ["data.mdb", "lock.mdb", "snapshot"]
    assert 1 <= segments <= 9, segments
    server.restart()
    with server.client() as client:
        ack = client.ingest_batch([work(f"s{b}-0", "s", 1, at_ms) for b in range(40)])
        assert (ack.accepted, ack.duplicates) == (0, 40)
        assert str(client.get_balance("s").period_charges) == "400"
    assert server.terminate() == 0
    segments, others = journal_files(server)
    assert others == ["data.mdb", "lock.mdb", "snapshot"]
    assert 1 <= segments <= 9, segments


def test_a_stop_with_nothing_new_since_the_stored_snapshot_writes_no_snapshot_and_no_segment(
    server_factory: ServerFactory,
) -> None:
    """architecture.md §4: a clean stop stores a snapshot of the last record, without compacting the dedupe segments
    (the next start's first store does). With nothing recorded since the stored snapshot it wrote one anyway, and
    each adds a segment of no change: started and stopped with no record between, the journal gained a segment
    every time, none ever compacted (9 became 10 over one such restart). Now such a stop writes nothing: three
    restarts leave the snapshot and the segments byte for byte as they were, and every id is still a duplicate."""
    server = server_factory(extra_args=["--snapshot-every", "1", "--snapshot-journal-factor", "0"])
    at_ms = time.time_ns() // 1_000_000 - 1000
    with server.client() as client:
        catalogue(client, ("q", False))
        assert client.ingest_batch([work(f"q-{i}", "q", 1, at_ms) for i in range(10)]).accepted == 10
    assert server.terminate() == 0
    stored = stored_files(server)
    for _ in range(3):
        server.restart()
        with server.client() as client:
            ack = client.ingest_batch([work(f"q-{i}", "q", 1, at_ms) for i in range(10)])  # records nothing
            assert (ack.accepted, ack.duplicates) == (0, 10)
        assert server.terminate() == 0
        assert stored_files(server) == stored


def stored_files(server: ServerProcess) -> dict[str, bytes]:
    """The snapshot and the dedupe segments in the data directory's journal/, by name."""
    journal = server.data_dir / "journal"
    return {p.name: p.read_bytes() for p in journal.iterdir() if p.name == "snapshot" or p.name.startswith("segment.")}


# ---------------------------------------------------------------------------------------------
# A full journal map with the clock's work due


def fill(client: TariffClient, customer_id: str, at_ms: int) -> int:
    """Sends batches of new ids, smaller and smaller, until not even one event fits: how many were acknowledged."""
    sent = 0
    for size in (5_000, 500, 50, 5, 1):
        while True:
            try:
                client.ingest_batch([work(f"f{sent}-{i}", customer_id, 1, at_ms) for i in range(size)])
            except TariffError as refused:
                assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
                assert "Grow --map-size-mb and restart" in refused.details, refused.details
                break
            sent += size
    return sent


def test_a_full_journal_with_a_hold_due_says_so_once_and_a_larger_map_records_the_expiry(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """README: "A full LMDB map refuses cleanly ... The server keeps serving reads. Restarted with a larger
    `--map-size-mb`, it accepts the refused batches". A hold of 2 credits (TTL 60 s) is made, then the 1 MiB map
    filled to the last event. Started again with the clock 2 minutes on, the hold is due: reads show it expired
    (nothing held), and the clock driver's AdvanceClock cannot be journaled. The log says so in one line; it
    logged "AdvanceClock failed; retrying" with a traceback every 50 ms or so (about 12 a second), each failure
    also rebuilding the whole state from the journal. Started with a 64 MiB map, the expiry is recorded: the
    release is FAILED_PRECONDITION, and the last batch refused is accepted."""
    server = server_factory(env=clock_env(tmp_path, offset_ms=0), extra_args=["--map-size-mb", "1"])
    at_ms = time.time_ns() // 1_000_000 - 1000
    with server.client() as client:
        catalogue(client, ("f", False))
        assert hold(client, "f", "r", 2, 60_000) == "2"
        sent = fill(client, "f", at_ms)
    server.kill9()
    server.env = clock_env(tmp_path, offset_ms=2 * 60_000)
    server.restart()
    with server.client() as client:
        assert held(client, "f") == "0"
        assert until(lambda: "journal is full" in server.log_tail(200) and "tariff.clock" in server.log_tail(200))
        time.sleep(1.0)  # a dozen more attempts' worth, before
        clock_lines = [line for line in server.log_tail(400).splitlines() if "tariff.clock" in line]
        assert len(clock_lines) == 1, clock_lines
        assert "Traceback" not in server.log_tail(400)
        assert held(client, "f") == "0"
    server.kill9()
    server.extra_args = ("--map-size-mb", "64")
    server.restart()
    with server.client() as client:
        assert until(lambda: held(client, "f") == "0")
        assert release_refusal(client, "f", "r")[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert outcome(client, work(f"f{sent}-0", "f", 1, at_ms)) == "ACCEPTED"


# ---------------------------------------------------------------------------------------------
# A clean stop with batches in flight


def test_sigterm_with_batches_in_flight_acks_only_what_is_durable_and_exits_0_saying_so(
    server_factory: ServerFactory,
) -> None:
    """README "Shutdown": on SIGTERM running calls finish ("their batches commit and are acknowledged"), a new call
    gets UNAVAILABLE (or, reaching the server as the stop begins, CANCELLED by gRPC, nothing of it applied: about
    1 run in 25 here), then a snapshot and exit 0; "Every batch is either committed and acknowledged, or not
    acknowledged ... resending an unacknowledged batch gives all duplicates or all accepted, never a mix"; "The
    operator's log": `shutting down`, then `stopped at journal seq N ... clean=True`. Batches of 100 new ids go
    out one after another from a thread while the server is stopped; after the restart every acknowledged batch
    is all duplicates, the first one not acknowledged all one or the other, and the charges are 100 a batch."""
    server = server_factory()
    at_ms = time.time_ns() // 1_000_000 - 1000
    batches = [[work(f"g{b}-{i}", "g", 1, at_ms) for i in range(100)] for b in range(400)]
    acked: list[int] = []
    refused: list[grpc.StatusCode] = []
    with server.client() as client:
        catalogue(client, ("g", False))

        def send() -> None:
            for number, batch in enumerate(batches):
                try:
                    assert client.ingest_batch(batch).accepted == 100
                except TariffError as error:
                    refused.append(error.code)
                    return
                acked.append(number)

        sender = threading.Thread(target=send)
        sender.start()
        assert until(lambda: len(acked) >= 5)
        assert server.terminate() == 0
        sender.join()
    # UNAVAILABLE, or CANCELLED from gRPC for a call that reached the server as the stop began (its handler never
    # ran: nothing of it applied, below).
    assert refused and refused[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), refused
    log = server.log_tail(20)
    assert "shutting down" in log and re.search(r"stopped at journal seq \d+ .*clean=True", log), log
    server.restart()
    with server.client() as client:
        assert acked == list(range(len(acked)))
        for number in acked:
            again = client.ingest_batch(batches[number])
            assert (again.accepted, again.duplicates) == (0, 100), number
        unacked = client.ingest_batch(batches[len(acked)])
        assert (unacked.accepted, unacked.duplicates) in ((100, 0), (0, 100))
        if refused[0] == grpc.StatusCode.CANCELLED:
            assert (unacked.accepted, unacked.duplicates) == (100, 0)
        assert str(client.get_balance("g").period_charges) == str(100 * (len(acked) + 1))


# ---------------------------------------------------------------------------------------------
# A snapshot the disk refuses for another reason than room


def test_a_snapshot_write_failing_otherwise_than_for_room_stops_the_server_saying_so_losing_nothing_acked(
    server_factory: ServerFactory,
) -> None:
    """README "Not promised": a snapshot write with no room on disk is kept out of the way (the journal alone
    recovers everything). One failing for another reason (an I/O error; here its file's name taken by a
    directory, as root ignores permissions) stops the writer at its next write: the log says `the writer stopped:
    ...` (CRITICAL, with the traceback), that write is UNAVAILABLE, the server exits 1, and every batch acknowledged
    (those after the failed store included) is there after the restart."""
    server = server_factory(extra_args=["--snapshot-every", "1", "--snapshot-journal-factor", "0"])
    at_ms = time.time_ns() // 1_000_000 - 1000
    in_the_way = server.data_dir / "journal" / "snapshot.partial"
    acked = 0
    with server.client() as client:
        catalogue(client, ("w", False))

        def take_the_name() -> bool:
            try:
                in_the_way.mkdir()
            except FileExistsError:  # a snapshot after the catalogue's last command is being stored under it
                return False
            return True

        assert until(take_the_name)
        # The writer stops at its next housekeeping after the failed store: after the next batch or so.
        while acked < 100:
            try:
                assert outcome(client, work(f"w{acked}", "w", 2, at_ms)) == "ACCEPTED"
            except TariffError as refused:
                assert refused.code == grpc.StatusCode.UNAVAILABLE, refused
                break
            acked += 1
            time.sleep(0.05)
        assert 1 <= acked < 100
        assert server.proc is not None
        assert server.proc.wait(timeout=20) == 1
    assert re.search(r"CRITICAL tariff\.sequencer: the writer stopped: IsADirectoryError", server.log_tail(200))
    in_the_way.rmdir()
    server.restart()
    with server.client() as client:
        assert [outcome(client, work(f"w{n}", "w", 2, at_ms)) for n in range(acked)] == ["DUPLICATE"] * acked
        assert str(client.get_balance("w").period_charges) in (str(2 * acked), str(2 * acked + 2))
