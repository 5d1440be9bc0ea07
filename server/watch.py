"""Who watches what (WatchBalance, WatchAlerts), and waking them once a group of changes is durable.

The writer (server/sequencer.py) tells the hub, after each committed group, which customers the group
touched and up to which alert seq it fired. Waking a watcher sets its one flag: that flag is its whole queue
(size one, the newest state wins). A woken watcher reads the state as it is when it gets to it, so however
many groups commit while it is still sending, it sends one newer balance, not a backlog: a slow watcher holds
no memory and never slows the writer. Nothing here runs per event, and while nobody watches a balance the
kernel does not even list the customers a batch touched (Billing.set_watching).

The watchers of one customer share the balance read after a change (`WatchedCustomer.balance`): the first of
them to read builds it, the others woken by the same change send the same bytes. Built per watcher, 200 watchers
of a customer with 300 grants cost the loop 305 ms per commit touching it, shared 7 ms (server/bench/watch_fanout.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from engine.billing import Billing
from server import telemetry
from server.sequencer import Sequencer

SHUTTING_DOWN = "the server is shutting down: watch again"  # WatchBalance: its first balance is the newest
ALERTS_SHUTTING_DOWN = "the server is shutting down: watch again (WatchAlerts with the last seq received)"


class Watcher:
    """One stream's wake-up flag."""

    __slots__ = ("_changed",)

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def wake(self) -> None:
        self._changed.set()

    async def changed(self) -> None:
        """Returns once woken since the last return (at once if that happened meanwhile)."""
        await self._changed.wait()
        self._changed.clear()


class SharedBalance(NamedTuple):
    """A balance as WatchBalance sends it, and the next instant it changes with no record (None: only by one)."""

    data: bytes
    next_change_ms: int | None


class WatchedCustomer:
    """A customer's balance watchers, and the balance read for them since the last committed change to it.

    Each committed change that touches the customer drops that balance before its watchers are woken, so every
    read after a wake-up is after the change that woke it. Read again later, before the next change, the balance
    differs only by time: at `next_change_ms` (a grant's start, a held grant's expiry, when the watchers wake
    anyway: a new read), and where something falls due (a hold's TTL, a grant's expiry or rollover), which the
    clock then records, a change, so a new read (balance.proto: changes in quick succession may arrive as one);
    a new period, README says, shows with the next change. So the watchers woken by one change share one read,
    and a new watcher's first balance is read for it (the balance now)."""

    __slots__ = ("_built", "_built_ms", "watchers")

    def __init__(self) -> None:
        self.watchers: set[BalanceWatcher] = set()
        self._built: SharedBalance | None = None
        self._built_ms = 0

    def changed(self) -> None:
        """A committed change touched the customer."""
        self._built = None

    def balance(self, now_ms: int, build: Callable[[int], SharedBalance], *, fresh: bool) -> SharedBalance:
        """The balance at now_ms: the one read since the last change while it holds at now_ms, unless `fresh`;
        else `build(now_ms)`'s, kept for the other watchers."""
        built = self._built
        if (
            not fresh
            and built is not None
            and self._built_ms <= now_ms
            and (built.next_change_ms is None or now_ms < built.next_change_ms)
        ):
            return built
        built = build(now_ms)
        self._built, self._built_ms = built, now_ms
        return built


class BalanceWatcher(Watcher):
    """A WatchBalance stream's flag, and the customer it watches."""

    __slots__ = ("customer",)

    def __init__(self, customer: WatchedCustomer) -> None:
        super().__init__()
        self.customer = customer


class WatchHub:
    def __init__(self, billing: Billing, sequencer: Sequencer) -> None:
        self.billing = billing
        self._balances: dict[str, WatchedCustomer] = {}
        self._alerts: set[Watcher] = set()
        self.balance_watchers = 0
        self.closing = False  # the server is shutting down: every watch stream ends
        # Alerts up to this seq are committed: the only ones a watcher is sent. Recovery committed them all.
        self.alerts_committed = billing.engine.state.alerts.last_seq
        sequencer.committed = self.committed
        telemetry.gauges.balances_watched = lambda: self.balance_watchers

    def _opened(self, watcher: Watcher) -> None:
        if self.closing:
            watcher.wake()  # a stream that arrives while the server shuts down ends at its first wait

    @contextlib.contextmanager
    def watch_balance(self, customer_id: str) -> Iterator[BalanceWatcher]:
        if not self._balances:
            self.billing.set_watching(True)
        customer = self._balances.setdefault(customer_id, WatchedCustomer())
        watcher = BalanceWatcher(customer)
        self._opened(watcher)
        customer.watchers.add(watcher)
        self.balance_watchers += 1
        try:
            yield watcher
        finally:
            self.balance_watchers -= 1
            customer.watchers.discard(watcher)
            if not customer.watchers:
                del self._balances[customer_id]
                if not self._balances:
                    self.billing.set_watching(False)

    @contextlib.contextmanager
    def watch_alerts(self) -> Iterator[Watcher]:
        watcher = Watcher()
        self._opened(watcher)
        self._alerts.add(watcher)
        try:
            yield watcher
        finally:
            self._alerts.discard(watcher)

    def close(self) -> None:
        """Ends every watch stream (each woken watcher sees `closing` and ends with UNAVAILABLE)."""
        self.closing = True
        for customer in self._balances.values():
            for balance_watcher in customer.watchers:
                balance_watcher.wake()
        for watcher in self._alerts:
            watcher.wake()

    def committed(self, touched: set[str] | None, alerts_upto: int) -> None:
        """A group is durable: wake the watchers of the customers it touched (None: the state was rebuilt from
        the journal, so every balance watcher) and, when it fired alerts, every alert watcher."""
        if alerts_upto != self.alerts_committed:
            if alerts_upto > self.alerts_committed:
                telemetry.alerts_fired.add(alerts_upto - self.alerts_committed)
            self.alerts_committed = alerts_upto
            for watcher in self._alerts:
                watcher.wake()
        if not self._balances:
            return
        if touched is None:
            customers = list(self._balances.values())
        else:
            customers = [customer for customer in map(self._balances.get, touched) if customer is not None]
        for customer in customers:
            customer.changed()  # before any of its watchers reads again
            for watcher in customer.watchers:
                watcher.wake()
