"""Acceptance audit 2 of WatchBalance over the wire (README "### Watching balances and alerts", balance.proto
WatchBalance): what earlier tests (test_server_watch, test_cli_watch, test_audit_alerts_wire, test_audit_gateway2_wire,
test_server_rerate_watch) did not cover: nothing sent for other customers' changes, holds expiring and grants
expiring by the server's clock, a hold settled by usage, top-ups bought by usage and by a hold, many watchers of one
customer, and a watcher across a server restart. Amounts worked out by hand in each docstring, never read back from
the server; the pricing is test_audit_gateway2_wire's catalogue (`work` events price n units at 1 credit each)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import release, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits2_wire import CARD_FROM_MS, customer, grant, new_grant
from tests.test_audit_gateway2_wire import catalogue, request, unary, work
from tests.test_audit_topups_wire import month_start_ms, policy, set_policy
from tests.test_server_auth import Keys

STREAM_TIMEOUT_S = 30.0
Shown = tuple[str, str, str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-watch2")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def watch(client: TariffClient, customer_id: str) -> tuple[grpc.Future, Iterator[balance_pb2.Balance]]:
    stream = client.balance.WatchBalance(
        balance_pb2.WatchBalanceRequest(customer_id=customer_id), timeout=STREAM_TIMEOUT_S
    )
    return stream, iter(stream)


def shown(balances: Iterator[balance_pb2.Balance]) -> Shown:
    """The next balance sent: (credits_remaining, credits_held, credits_available)."""
    balance = next(balances)
    return balance.credits_remaining, balance.credits_held, balance.credits_available


def spend(client: TariffClient, transaction_id: str, customer_id: str, units: int, reservation_id: str = "") -> None:
    ack = client.ingest_batch([work(transaction_id, customer_id, {"n": units}, reservation_id=reservation_id)])
    assert (ack.accepted, list(ack.rejected)) == (1, []), ack


def test_changes_to_other_customers_send_a_watcher_nothing(server: ServerProcess) -> None:
    """BLOCK customers `wa` (grant 10) and `wb` (grant 10). Watching wa: first (10, 0, 10). Then wb alone changes:
    a grant of 5, a batch of 3 units, a hold of 2, its release. Then wa spends 2: (8, 0, 8). The stream's second
    balance is that one: nothing was sent for wb's changes (each would have been a balance equal to wa's first at
    best, a newer as_of_seq at worst)."""
    with server.client() as client:
        for name in ("wa", "wb"):
            customer(client, name, block=True)
            grant(client, name, "g", "10")
        stream, balances = watch(client, "wa")
        first = next(balances)
        assert (first.customer_id, first.credits_remaining, first.credits_held) == ("wa", "10", "0")
        grant(client, "wb", "more", "5")
        spend(client, "wb-1", "wb", 3)
        assert unary(client, request("wb", {"n": 2}, reservation_id="h")) == (True, "OK", "2", "10", "h")
        assert release(client, "wb", "h") == "2"
        spend(client, "wa-1", "wa", 2)
        second = next(balances)
        assert (second.customer_id, second.credits_remaining, second.credits_available) == ("wa", "8", "8")
        assert second.as_of_seq > first.as_of_seq
        stream.cancel()


def test_a_hold_that_expires_by_the_clock_sends_the_freed_balance(server: ServerProcess) -> None:
    """README: a balance after "a hold and its release, settlement or expiry". BLOCK, grant 10. A hold of 4 with a
    TTL of 1 s: (10, 4, 6). Nobody does anything else; the server's clock expires the hold about a second later and
    the watcher gets (10, 0, 10) without another request."""
    with server.client() as client:
        customer(client, "he", block=True)
        grant(client, "he", "g", "10")
        stream, balances = watch(client, "he")
        assert shown(balances) == ("10", "0", "10")
        ttl = Duration(seconds=1)
        assert unary(client, request("he", {"n": 4}, reservation_id="r", ttl=ttl)) == (True, "OK", "4", "6", "r")
        assert shown(balances) == ("10", "4", "6")
        assert shown(balances) == ("10", "0", "10")
        stream.cancel()


def test_a_grant_that_expires_by_the_clock_sends_the_balance_without_it(server: ServerProcess) -> None:
    """README: a grant that expires is a change "when the server's clock records it". ALLOW, grants `soon` of 7
    expiring 1.5 s from now and `kept` of 5 that never expires: (12, 0, 12). Spend 3 (burns `soon`, earliest
    expiry first): (9, 0, 9). Then the clock expires `soon` with 4 left (breakage): (5, 0, 5), and the row of
    `soon` shows amount 7 = drawn 3 + expired 4, remaining 0."""
    with server.client() as client:
        customer(client, "ge", block=False)
        grant(client, "ge", "kept", "5")
        grant(client, "ge", "soon", "7", expires_at_ms=now_ms() + 1_500)
        stream, balances = watch(client, "ge")
        assert shown(balances) == ("12", "0", "12")
        spend(client, "ge-1", "ge", 3)
        assert shown(balances) == ("9", "0", "9")
        expired = next(balances)
        assert (expired.credits_remaining, expired.credits_held, expired.credits_available) == ("5", "0", "5")
        rows = {g.grant_id: (g.amount, g.drawn, g.expired, g.remaining) for g in expired.grants}
        assert rows == {"ge.kept": ("5", "0", "0", "5"), "ge.soon": ("7", "3", "4", "0")}
        stream.cancel()


def test_a_hold_settled_by_usage_sends_one_balance(server: ServerProcess) -> None:
    """BLOCK, grant 10. Hold r of 4: (10, 4, 6). An event of 3 units settling r: the 4 come back and 3 are drawn,
    (7, 0, 7), one balance. The retry of that event (a duplicate) changes nothing and sends nothing: the next
    balance is the one after spending 1 more, (6, 0, 6)."""
    with server.client() as client:
        customer(client, "hs", block=True)
        grant(client, "hs", "g", "10")
        stream, balances = watch(client, "hs")
        assert shown(balances) == ("10", "0", "10")
        assert unary(client, request("hs", {"n": 4}, reservation_id="r")) == (True, "OK", "4", "6", "r")
        assert shown(balances) == ("10", "4", "6")
        settling = work("hs-1", "hs", {"n": 3}, reservation_id="r")
        assert client.ingest_batch([settling]).accepted == 1
        assert shown(balances) == ("7", "0", "7")
        retried = client.ingest_batch([settling])
        assert (retried.accepted, retried.duplicates) == (0, 1)
        spend(client, "hs-2", "hs", 1)
        assert shown(balances) == ("6", "0", "6")
        stream.cancel()


def test_top_ups_bought_by_usage_and_by_a_hold_each_send_one_balance(server: ServerProcess) -> None:
    """README Automatic top-up: "the same kernel step buys one TOP_UP grant of recharge_to - available". ALLOW,
    grant 10, policy threshold 5, recharge_to 20, price 1, at most 2 a period: (10, 0, 10).
    - Spend 6: 4 available < 5 buys 20 - 4 = 16; one balance (20, 0, 20), the purchase in it.
    - Hold 16: 4 available < 5 buys 16 again (the hold's answer counts it: 20 available); one balance: remaining
      20 + 16 = 36, held 16, available 20."""
    with server.client() as client:
        contract_id = customer(client, "tu", block=False)
        grant(client, "tu", "g", "10")
        set_policy(client, contract_id, policy("5", "20", "1", 2))
        stream, balances = watch(client, "tu")
        assert shown(balances) == ("10", "0", "10")
        spend(client, "tu-1", "tu", 6)
        bought = next(balances)
        assert (bought.credits_remaining, bought.credits_held, bought.credits_available) == ("20", "0", "20")
        assert sorted((g.amount, g.remaining) for g in bought.grants) == [("10", "4"), ("16", "16")]
        assert unary(client, request("tu", {"n": 16}, reservation_id="big")) == (True, "OK", "16", "20", "big")
        assert shown(balances) == ("36", "16", "20")
        stream.cancel()


def test_many_watchers_of_one_customer_each_get_every_change(server: ServerProcess) -> None:
    """Five watchers of `mw` (BLOCK, grant 10) on separate channels, one of `mx`. `mw` spends 1, then 2:
    every `mw` watcher gets (10), (9), (7); the `mx` watcher gets its first and, after mx spends 1, (4) of 5."""
    with server.client() as client:
        customer(client, "mw", block=True)
        customer(client, "mx", block=True)
        grant(client, "mw", "g", "10")
        grant(client, "mx", "g", "5")
        channels = [server.client() for _ in range(6)]
        try:
            streams = [watch(c, "mw") for c in channels[:5]]
            other_stream, other = watch(channels[5], "mx")
            assert [shown(b) for _, b in streams] == [("10", "0", "10")] * 5
            assert shown(other) == ("5", "0", "5")
            spend(client, "mw-1", "mw", 1)
            assert [shown(b) for _, b in streams] == [("9", "0", "9")] * 5
            spend(client, "mw-2", "mw", 2)
            expected = client.get_balance("mw")  # as_of_seq counts every record: read before mx's batch
            spend(client, "mx-1", "mx", 1)
            assert shown(other) == ("4", "0", "4")
            finals = [next(b) for _, b in streams]
            assert {(f.credits_remaining, f.credits_available) for f in finals} == {("7", "7")}
            assert finals == [expected] * 5
            for stream, _ in (*streams, (other_stream, other)):
                stream.cancel()
        finally:
            for channel in channels:
                channel.close()


def test_a_watcher_across_a_restart_ends_unavailable_and_watches_again_from_the_same_balance(
    tmp_path: Path,
) -> None:
    """balance.proto: "at shutdown it ends with UNAVAILABLE". BLOCK, grant 10, spend 3: (7, 0, 7). The server
    restarts; the stream ends UNAVAILABLE (saying to watch again, naming no alert seq); watching again sends the same balance (as_of_seq included), and the next
    change (spend 2) sends (5, 0, 5)."""
    process = ServerProcess(tmp_path / "data", extra_args=["--close-grace", "off"])
    process.start()
    try:
        with process.client() as client:
            catalogue(client)
            customer(client, "rs", block=True)
            grant(client, "rs", "g", "10")
            spend(client, "rs-1", "rs", 3)
            stream, balances = watch(client, "rs")
            before = next(balances)
            assert (before.credits_remaining, before.credits_available) == ("7", "7")
            process.restart()
            with pytest.raises(TariffError) as ended:
                next(balances)
            assert ended.value.code == grpc.StatusCode.UNAVAILABLE
            # It says to watch again, not to resume another stream: a balance stream has no seq to resume from.
            assert "shutting down: watch again" in ended.value.details, ended.value
            assert "WatchAlerts" not in ended.value.details and "seq" not in ended.value.details, ended.value
        with process.client() as client:
            stream, balances = watch(client, "rs")
            assert next(balances) == before
            spend(client, "rs-2", "rs", 2)
            assert shown(balances) == ("5", "0", "5")
            stream.cancel()
    finally:
        process.stop()


def test_a_slow_watcher_gets_the_newest_balance_when_it_reads_again(server: ServerProcess) -> None:
    """README: a watcher that reads slowly "gets the newest balance when it reads again". BLOCK, grant 100. The
    watcher reads its first (100), then nothing while 30 batches of 1 unit each are acknowledged; read until it
    reaches the balance GetBalance shows then: (70, 0, 70), the seqs never going back."""
    with server.client() as client:
        customer(client, "sw", block=True)
        grant(client, "sw", "g", "100")
        stream, balances = watch(client, "sw")
        assert shown(balances) == ("100", "0", "100")
        for index in range(30):
            spend(client, f"sw-{index}", "sw", 1)
        final = client.get_balance("sw")
        assert (final.credits_remaining, final.credits_available) == ("70", "70")
        time.sleep(0.2)
        received = [next(balances)]
        while received[-1].as_of_seq < final.as_of_seq:
            received.append(next(balances))
        assert received[-1] == final
        assert [b.as_of_seq for b in received] == sorted(b.as_of_seq for b in received)
        stream.cancel()


def test_retried_admin_requests_and_a_second_release_send_nothing(server: ServerProcess) -> None:
    """README: a balance "one equal to the previous is not sent again"; ReleaseReservation again "answers the same
    amount and changes nothing"; a retried GrantCredits (same id, same content) creates nothing. BLOCK, grant g 10:
    first (10, 0, 10). Hold r of 4: (10, 4, 6). Release r: (10, 0, 10). Then retries that change nothing: the
    release of r again (answers 4), the grant g again, the same top-up policy set twice (the second a retry). Then
    spend 1: the next balance is (9, 0, 9), not one of the retries' (equal amounts, a newer as_of_seq)."""
    with server.client() as client:
        contract_id = customer(client, "rt", block=True)
        grant(client, "rt", "g", "10")
        set_policy(client, contract_id, policy("1", "2", "1", 1))
        stream, balances = watch(client, "rt")
        assert shown(balances) == ("10", "0", "10")
        assert unary(client, request("rt", {"n": 4}, reservation_id="r")) == (True, "OK", "4", "6", "r")
        assert shown(balances) == ("10", "4", "6")
        assert release(client, "rt", "r") == "4"
        assert shown(balances) == ("10", "0", "10")
        seq = client.get_balance("rt").as_of_seq
        assert release(client, "rt", "r") == "4"
        grant(client, "rt", "g", "10")
        set_policy(client, contract_id, policy("1", "2", "1", 1))
        assert client.get_balance("rt").as_of_seq == seq
        spend(client, "rt-1", "rt", 1)
        after = next(balances)
        assert (after.credits_remaining, after.credits_held, after.credits_available) == ("9", "0", "9")
        stream.cancel()


def test_a_grant_that_starts_later_sends_the_balance_with_it_when_it_starts(server: ServerProcess) -> None:
    """balance.proto credits_remaining: the "sum of remaining over started, unexpired grants", so a grant's start
    changes the balance as much as its expiry does, and README sends the newest balance after every change that
    touches the customer. BLOCK, grant `now` of 5: (5, 0, 5). A grant `later` of 7 starting 1.5 s from now: the
    grant's balance shows it in the rows but not in the credit, (5, 0, 5). When it starts, with nobody doing
    anything else, the watcher gets (12, 0, 12)."""
    with server.client() as client:
        customer(client, "gs", block=True)
        grant(client, "gs", "now", "5")
        stream, balances = watch(client, "gs")
        assert shown(balances) == ("5", "0", "5")
        grant(client, "gs", "later", "7", starts_at_ms=now_ms() + 1_500)
        granted = next(balances)
        assert (granted.credits_remaining, granted.credits_available) == ("5", "5")
        assert sorted(g.grant_id for g in granted.grants) == ["gs.later", "gs.now"]
        assert shown(balances) == ("12", "0", "12")
        stream.cancel()


def test_a_rollover_by_the_clock_reaches_the_watcher(server: ServerProcess) -> None:
    """README Rollover: at the end of the period a grant starts in, rollover_fraction x its remainder moves into a
    ROLLOVER grant, the rest breaks; README: a grant that rolls over is a change "when the server's clock records
    it". ALLOW, a contract from last month's start; watching `ro`: (0, 0, 0). Grant R of 10 starting last month,
    rollover_fraction 0.5: last month has ended, so the clock rolls it over at once: 10 x 0.5 = 5 into the ROLLOVER
    grant, 5 broken. The watcher, reading on, reaches the balance with the ROLLOVER grant: (5, 0, 5), R's row
    amount 10 = drawn 5 (what moved) + expired 5."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="ro", name="ro"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-ro",
                customer_id="ro",
                rate_card_id="card",
                starting_at=stamp(month_start_ms(1)),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="1",
                currency="USD",
            )
        )
        stream, balances = watch(client, "ro")
        assert shown(balances) == ("0", "0", "0")
        made = new_grant("ro", "R", "10", starts_at_ms=month_start_ms(1))
        made.rollover_fraction = "0.5"
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        balance = next(balances)
        while not any(g.kind == contracts_pb2.ROLLOVER for g in balance.grants):
            balance = next(balances)
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("5", "0", "5")
        rows = {g.kind: (g.amount, g.drawn, g.expired, g.remaining) for g in balance.grants}
        assert rows == {contracts_pb2.PROMOTIONAL: ("10", "5", "5", "0"), contracts_pb2.ROLLOVER: ("5", "0", "0", "5")}
        stream.cancel()


def publish_units_price(client: TariffClient, rate_card_id: str, version: int, price: str, from_ms: int) -> None:
    """A version pricing units at `price`, tin at 1 and tout at 2."""
    prices = (("units", price), ("tin", "1"), ("tout", "2"))
    rates = [pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price=q)) for p, q in prices]
    if version == 1:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=rate_card_id, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=rate_card_id, upsert_rates=rates)
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=rate_card_id, version=version, effective_from=stamp(from_ms))
    )


def test_a_retroactive_publish_sends_only_the_customers_whose_balance_it_changed(server: ServerProcess) -> None:
    """README: a balance after "a retroactive publish or rollback that changed its charges or draws". Card `c2`
    (units 1, tin 1, tout 2). ALLOW, each with a grant of 10: `r1` on c2 spends 3 units: (7); `r2` on c2 makes a call of
    in=2, out=0 (2 x 1 + 0 x 2): (8); `r3` on `card` spends 3 units: (7). Then c2's version 2 makes units cost 2 from the start of
    the month: r1 is re-rated, 3 x 2 = 6: (4, 0, 4); r2's usage of c2 is priced the same (no units) and r3 is on
    another card: nothing is sent to them. Then r2 spends 1 unit (2 credits now): (6); r3 spends 1 unit: (6): those
    are their second balances."""
    with server.client() as client:
        publish_units_price(client, "c2", 1, "1", CARD_FROM_MS)
        for name, card in (("r1", "c2"), ("r2", "c2"), ("r3", "card")):
            customer(client, name, block=False, rate_card_id=card)
            grant(client, name, "g", "10")
        spend(client, "r1-1", "r1", 3)
        ack = client.ingest_batch([work("r2-1", "r2", {"in": 2, "out": 0}, event_type="call")])
        assert (ack.accepted, list(ack.rejected)) == (1, []), ack
        spend(client, "r3-1", "r3", 3)
        watched = {name: watch(client, name) for name in ("r1", "r2", "r3")}
        assert {name: shown(b) for name, (_, b) in watched.items()} == {
            "r1": ("7", "0", "7"),
            "r2": ("8", "0", "8"),
            "r3": ("7", "0", "7"),
        }
        publish_units_price(client, "c2", 2, "2", month_start_ms())
        assert shown(watched["r1"][1]) == ("4", "0", "4")
        spend(client, "r2-2", "r2", 1)
        spend(client, "r3-2", "r3", 1)
        assert shown(watched["r2"][1]) == ("6", "0", "6")
        assert shown(watched["r3"][1]) == ("6", "0", "6")
        for stream, _ in watched.values():
            stream.cancel()


def test_open_watch_streams_count_against_max_concurrent_rpcs(tmp_path: Path) -> None:
    """README: "Each open stream counts against --max-concurrent-rpcs" (beyond it: RESOURCE_EXHAUSTED). With a
    limit of 2, two open watches of `mc` leave no room for a GetBalance; once one is cancelled, a call gets through
    again."""
    process = ServerProcess(tmp_path / "data", extra_args=["--close-grace", "off", "--max-concurrent-rpcs", "2"])
    process.start()
    try:
        with process.client() as client:
            catalogue(client)
            customer(client, "mc", block=True)
            grant(client, "mc", "g", "10")
            watched = [watch(client, "mc") for _ in range(2)]
            assert [shown(b) for _, b in watched] == [("10", "0", "10")] * 2
            with pytest.raises(TariffError) as refused:
                client.get_balance("mc")
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            watched[0][0].cancel()
            assert wait_for(lambda: _balance_or_none(client, "mc") == ("10", "0", "10"), 10)
            watched[1][0].cancel()
    finally:
        process.stop()


def _balance_or_none(client: TariffClient, customer_id: str) -> Shown | None:
    try:
        balance = client.get_balance(customer_id)
    except TariffError as refused:
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        return None
    return balance.credits_remaining, balance.credits_held, balance.credits_available


def test_a_restricted_ingest_key_watches_its_customer_through_changes_and_no_other(tmp_path: Path) -> None:
    """README: "a key restricted to some customers may watch only those" (PERMISSION_DENIED otherwise), "as it may
    watch balances (a gateway's ingest key too)". A gateway key (role ingest) restricted to `k1`: its watch of k1
    (BLOCK, grant 10) gets (10, 0, 10), then the balance after its own batch of 2 units, (8, 0, 8), then after
    the admin's hold of 3 on k1, (8, 3, 5); watching k2 (which exists) and an unknown id are both PERMISSION_DENIED,
    so the key learns nothing of customers not its own."""
    keys = Keys(tmp_path / "keys.json", {"admin": ("admin", None), "gateway": ("ingest", ["k1"])})
    process = ServerProcess(
        tmp_path / "data", extra_args=["--close-grace", "off", *keys.args], api_key=keys.key["admin"]
    )
    process.start()
    try:
        with process.client() as admin, process.client(api_key=keys.key["gateway"]) as gateway:
            catalogue(admin)
            for name in ("k1", "k2"):
                customer(admin, name, block=True)
                grant(admin, name, "g", "10")
            stream, balances = watch(gateway, "k1")
            assert shown(balances) == ("10", "0", "10")
            spend(gateway, "k1-1", "k1", 2)
            assert shown(balances) == ("8", "0", "8")
            assert unary(admin, request("k1", {"n": 3}, reservation_id="h")) == (True, "OK", "3", "5", "h")
            assert shown(balances) == ("8", "3", "5")
            for other in ("k2", "nobody"):
                with pytest.raises(TariffError) as refused:
                    next(watch(gateway, other)[1])
                assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED, other
            stream.cancel()
    finally:
        process.stop()
