"""A fourth acceptance audit of README "Credits and the gateway" and "Watching balances and alerts" over the wire
(balance.proto), on the gateway path combined with grant expiries and the watch: what the earlier audits
(test_audit_gateway2_wire.py, test_audit_holds_wire.py, test_audit_holds2_wire.py, test_audit_credits_combo_wire.py)
leave out. Every amount asserted is worked out by hand from the docs (the arithmetic is in each docstring), never read
back from the server.

Products and rate card as in tests/test_audit_gateway2_wire.py: `units` (event type `work`, SUM of `n`) at 1 credit
a unit. One server for the file (`--close-grace off`), each test on customers of its own, contracts from this
month's start. Grant ids are `<customer>.<name>`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2

from tests.audit_fixtures import release, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits2_wire import customer, grant
from tests.test_audit_gateway2_wire import catalogue, request, unary

HOUR = Duration(seconds=3600)

WATCH_TIMEOUT_S = 30.0

# (credits_remaining, credits_held, credits_available, {grant name: (remaining, held, expired)})
Seen = tuple[str, str, str, dict[str, tuple[str, str, str]]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-gateway3")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def seen(customer_id: str, balance: balance_pb2.Balance) -> Seen:
    rows = {g.grant_id.removeprefix(f"{customer_id}."): (g.remaining, g.held, g.expired) for g in balance.grants}
    return balance.credits_remaining, balance.credits_held, balance.credits_available, rows


class Watching:
    """WatchBalance read on a thread of its own, every balance it sends kept (as `seen`), until the stream ends."""

    def __init__(self, client: TariffClient, customer_id: str) -> None:
        self.customer_id = customer_id
        self.balances: list[Seen] = []
        self.call = client.balance.WatchBalance(
            balance_pb2.WatchBalanceRequest(customer_id=customer_id), timeout=WATCH_TIMEOUT_S
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for balance in self.call:
                self.balances.append(seen(self.customer_id, balance))
        except TariffError:
            pass  # cancelled at the end of the test

    def sent(self, count: int) -> bool:
        return wait_for(lambda: len(self.balances) >= count, WATCH_TIMEOUT_S / 2)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_a_grant_expiring_while_holds_hold_all_it_has_left_is_sent_to_watchers_at_its_expiry(
    server: ServerProcess,
) -> None:
    """balance.proto GrantBalance.remaining: "0 once expired, when what holds still take from it shows in held
    alone"; WatchBalance sends the balance after every change, and README: "When a grant that starts later starts,
    the balance is sent then (its credit joins it with no record)". BLOCK; `soon` 5 credits (priority -1: burns
    first), expiring about 6 s ahead; `late` 10. A hold of 5 takes all of `soon`: 15 remaining, 5 held, 10
    available; soon (remaining 5, held 5, expired 0), late (10, 0, 0).
    At `soon`'s expiry nothing breaks (all it has left is held, which "becomes breakage when the hold ends"), the
    totals stay (the held 5 count in credits_remaining and credits_held) but `soon` now shows remaining 0, held 5:
    a watcher is sent that balance then, with no other change. The release then breaks the 5: soon (0, 0, 5),
    totals 10, 0, 10. So the watcher sees three balances, in this order. A balance may come twice in a row: the first
    write after the expiry also records an AdvanceClock, and each record sends the balance (`as_of_seq` apart, the
    same), so repeats in a row are one balance here."""
    with server.client() as client:
        customer(client, "hx", block=True)
        expires_ms = now_ms() + 6000
        grant(client, "hx", "soon", "5", priority=-1, expires_at_ms=expires_ms)
        grant(client, "hx", "late", "10")
        assert unary(client, request("hx", {"n": 5}, reservation_id="all", ttl=HOUR)) == (True, "OK", "5", "10", "all")
        before: Seen = ("15", "5", "10", {"soon": ("5", "5", "0"), "late": ("10", "0", "0")})
        expired: Seen = ("15", "5", "10", {"soon": ("0", "5", "0"), "late": ("10", "0", "0")})
        released: Seen = ("10", "0", "10", {"soon": ("0", "0", "5"), "late": ("10", "0", "0")})
        watching = Watching(client, "hx")
        try:
            assert watching.sent(1)
            assert now_ms() < expires_ms, "too slow: the grant expired before the watch began"
            assert watching.sent(2), f"no balance sent at the grant's expiry: {watching.balances}"
            assert seen("hx", client.get_balance("hx")) == expired
            assert release(client, "hx", "all") == "5"
            assert watching.sent(3)
            distinct = [b for i, b in enumerate(watching.balances) if i == 0 or b != watching.balances[i - 1]]
            assert distinct == [before, expired, released], watching.balances
        finally:
            watching.close()
