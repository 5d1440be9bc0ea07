"""Who watches what (WatchBalance, WatchAlerts), and waking them once a group of changes is durable.

The writer (server/sequencer.py) tells the hub, after each committed group, which customers the group
touched and up to which alert seq it fired. Waking a watcher sets its one flag: that flag is its whole queue
(size one, the newest state wins). A woken watcher reads the state as it is when it gets to it, so however
many groups commit while it is still sending, it sends one newer balance, not a backlog: a slow watcher holds
no memory and never slows the writer. Nothing here runs per event, and while nobody watches a balance the
kernel does not even list the customers a batch touched (Billing.set_watching).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

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


class WatchHub:
    def __init__(self, billing: Billing, sequencer: Sequencer) -> None:
        self.billing = billing
        self._balances: dict[str, set[Watcher]] = {}
        self._alerts: set[Watcher] = set()
        self.balance_watchers = 0
        self.closing = False  # the server is shutting down: every watch stream ends
        # Alerts up to this seq are committed: the only ones a watcher is sent. Recovery committed them all.
        self.alerts_committed = billing.engine.state.alerts.last_seq
        sequencer.committed = self.committed
        telemetry.gauges.balances_watched = lambda: self.balance_watchers

    def _new_watcher(self) -> Watcher:
        watcher = Watcher()
        if self.closing:
            watcher.wake()  # a stream that arrives while the server shuts down ends at its first wait
        return watcher

    @contextlib.contextmanager
    def watch_balance(self, customer_id: str) -> Iterator[Watcher]:
        watcher = self._new_watcher()
        if not self._balances:
            self.billing.set_watching(True)
        self._balances.setdefault(customer_id, set()).add(watcher)
        self.balance_watchers += 1
        try:
            yield watcher
        finally:
            self.balance_watchers -= 1
            watchers = self._balances[customer_id]
            watchers.discard(watcher)
            if not watchers:
                del self._balances[customer_id]
                if not self._balances:
                    self.billing.set_watching(False)

    @contextlib.contextmanager
    def watch_alerts(self) -> Iterator[Watcher]:
        watcher = self._new_watcher()
        self._alerts.add(watcher)
        try:
            yield watcher
        finally:
            self._alerts.discard(watcher)

    def close(self) -> None:
        """Ends every watch stream (each woken watcher sees `closing` and ends with UNAVAILABLE)."""
        self.closing = True
        for watchers in (*self._balances.values(), self._alerts):
            for watcher in watchers:
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
            for watchers in self._balances.values():
                for watcher in watchers:
                    watcher.wake()
            return
        for customer_id in touched:
            for watcher in self._balances.get(customer_id, ()):
                watcher.wake()
