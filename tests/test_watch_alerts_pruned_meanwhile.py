"""WatchAlerts from after_seq 0 reads from the oldest alert kept. The log is pruned (a new, shorter list bound to
the book) by whichever thread fires an alert, and balance rules fire on the rating thread while the loop serves
the stream: a watcher that took the oldest seq from one list and its page from the next was refused as if it had
asked for alerts no longer kept."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import SupportsIndex, cast

import pytest

from engine import alerts
from engine.alerts import AlertType, FiredAlert
from engine.billing import Billing
from server.sequencer import Sequencer
from server.services.alerts import AlertService
from server.watch import WatchHub
from tests.engine_fixtures import EPOCH_MS
from tests.test_engine_alerts import _rule


def test_a_watch_from_the_oldest_alert_is_not_refused_by_a_prune_on_another_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(alerts, "ALERTS_KEPT", 10)
    billing = Billing()
    book = billing.engine.state.alerts
    _rule(book, AlertType.TOP_UP_EXECUTED)
    for seq in range(1, 12):  # 11: the next alert prunes the log to the newest 10
        alerts.notice(book, "TOP_UP_EXECUTED", "acme", {}, EPOCH_MS, seq)
    sequencer = cast(Sequencer, SimpleNamespace(committed=None))
    watch = WatchHub(billing, sequencer)
    service = AlertService(billing, sequencer, watch=watch)
    watch.alerts_committed = 12
    pruned: list[int] = []

    class FiresOnFirstRead(list[FiredAlert]):
        """The log, as the rating thread fires alert 12 (and prunes) while the loop first reads it."""

        def __getitem__(self, index: SupportsIndex | slice) -> object:  # type: ignore[override]
            if not pruned:
                pruned.append(1)
                rating = threading.Thread(
                    target=alerts.notice, args=(book, "TOP_UP_EXECUTED", "acme", {}, EPOCH_MS, 12)
                )
                rating.start()
                rating.join()
            return super().__getitem__(index)

    book.log = FiresOnFirstRead(book.log)
    page = service._alerts_after(0, 0)
    assert pruned and [alert.seq for alert in book.log] == list(range(3, 13))  # pruned meanwhile
    assert [alert.seq for alert in page] == list(range(1, 13))  # the list it read, from its oldest
