"""AlertService: alert rules (engine/alerts.py) and the stream of the alerts they fired."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from tariff.v1 import alerts_pb2, alerts_pb2_grpc

from engine import alerts
from engine import commands as cmd
from engine.billing import Billing
from engine.errors import FailedPrecondition, InvalidArgument
from engine.money import format_picos
from server import auth, convert
from server.errors import OutOfRange, Unavailable, streaming, unary
from server.sequencer import Sequencer
from server.services.common import Context, SortedKeys, _Base, _fitted, _page, actor_of, wall_ms
from server.watch import ALERTS_SHUTTING_DOWN, WatchHub

# Alerts read from the log between two sends of the stream's loop.
WATCH_PAGE_ALERTS = 256


def _watches_one_of(rule: alerts.AlertRule, customers: frozenset[str]) -> bool:
    """A rule for every customer watches each of them; a rule for one customer, that one."""
    return not rule.customer_id or rule.customer_id in customers


def alert_rule_pb(rule: alerts.AlertRule) -> alerts_pb2.AlertRule:
    threshold = format_picos(rule.threshold_picos) if rule.type in alerts.THRESHOLD_TYPES else ""
    return alerts_pb2.AlertRule(
        id=rule.id,
        customer_id=rule.customer_id,
        all=not rule.customer_id,
        type=rule.type.value,
        threshold=threshold,
    )


def alert_pb(alert: alerts.FiredAlert) -> alerts_pb2.Alert:
    message, details = alerts.as_shown(alert)  # an event alert's amounts in the pricing unit, not picos
    return alerts_pb2.Alert(
        seq=alert.seq,
        rule_id=alert.rule_id,
        customer_id=alert.customer_id,
        type=alert.type.value,
        message=message,
        time=convert.timestamp(alert.at_ms),
        details=details,
        journal_seq=alert.journal_seq,
    )


class AlertService(_Base, alerts_pb2_grpc.AlertServiceServicer):
    def __init__(
        self,
        billing: Billing,
        sequencer: Sequencer,
        clock_ms: Callable[[], int] = wall_ms,
        watch: WatchHub | None = None,
    ) -> None:
        super().__init__(billing, sequencer, clock_ms)
        self.watch = watch if watch is not None else WatchHub(billing, sequencer)
        self._rule_ids = SortedKeys()  # ListAlertRules' pages

    @unary
    async def CreateAlert(self, request: alerts_pb2.CreateAlertRequest, context: Context) -> alerts_pb2.AlertRule:
        try:
            type_name = alerts_pb2.AlertType.Name(request.type)
        except ValueError:
            raise InvalidArgument.field("type", f"unknown alert type {request.type}") from None
        all_customers = request.WhichOneof("scope") == "all" and request.all
        command = cmd.CreateAlert(
            self.clock_ms(),
            actor_of(context),
            request.id,
            request.customer_id,
            all_customers,
            type_name,
            convert.decimal_text(request.threshold, "threshold"),
            applied_audited=True,
            rules_bounded=True,
        )
        return alert_rule_pb(await self._apply(command, alerts.AlertRule))

    @unary
    async def DeleteAlertRule(
        self, request: alerts_pb2.DeleteAlertRuleRequest, context: Context
    ) -> alerts_pb2.AlertRule:
        command = cmd.DeleteAlertRule(self.clock_ms(), actor_of(context), request.id)
        return alert_rule_pb(await self._apply(command, alerts.AlertRule))

    @unary
    async def ListAlertRules(
        self, request: alerts_pb2.ListAlertRulesRequest, context: Context
    ) -> alerts_pb2.ListAlertRulesResponse:
        book = self.engine.state.alerts
        rules = book.rules  # one dict: a deletion replaces it, never edits it
        allowed = auth.allowed_customers()
        if allowed is None:
            ids = self._rule_ids.of(rules)
        else:
            ids = sorted(i for i, rule in rules.items() if _watches_one_of(rule, allowed))

        def deleted(rule_id: str) -> bool:
            """A token naming a rule deleted since its page (one the caller could list) goes on after it."""
            rule = book.deleted.get(rule_id)
            return rule is not None and (allowed is None or _watches_one_of(rule, allowed))

        page, next_token = _page(ids, request.page_size, request.page_token, gone=deleted)
        listed, next_token = _fitted([alert_rule_pb(rules[i]) for i in page], page, next_token, self.page_bytes_max)
        return alerts_pb2.ListAlertRulesResponse(rules=listed, next_page_token=next_token)

    @streaming
    async def WatchAlerts(
        self, request: alerts_pb2.WatchAlertsRequest, context: Context
    ) -> AsyncIterator[alerts_pb2.Alert]:
        """Every committed alert after `after_seq`, then each new one once committed (for a restricted key, those
        of its customers). Registered before the first read, so an alert committed meanwhile wakes it."""
        allowed = auth.allowed_customers()
        after = request.after_seq
        newest = self.watch.alerts_committed
        if after > newest:
            raise OutOfRange(f"after_seq: {after} is past the newest alert, {newest}")
        with self.watch.watch_alerts() as watcher:
            while True:
                page = self._alerts_after(after, request.after_seq)
                for alert in page:
                    if allowed is None or alert.customer_id in allowed:
                        yield alert_pb(alert)
                    after = alert.seq  # past another customer's alert too, unsent
                if len(page) < WATCH_PAGE_ALERTS:
                    await watcher.changed()
                if self.watch.closing:
                    raise Unavailable(ALERTS_SHUTTING_DOWN)

    def _alerts_after(self, after: int, asked: int) -> list[alerts.FiredAlert]:
        book = self.engine.state.alerts  # read afresh: a rebuild from the journal replaces the state
        try:
            # 0: from the oldest kept.
            return alerts.alerts_after(book, after, self.watch.alerts_committed, WATCH_PAGE_ALERTS, from_oldest=True)
        except alerts.PrunedAlerts as pruned:
            raise FailedPrecondition(
                f"after_seq: the alerts after {after} up to {pruned.first_kept - 1} are no longer kept (the newest "
                f"{alerts.ALERTS_KEPT} are; asked after {asked}); the oldest kept is {pruned.first_kept}: watch "
                f"again with after_seq {pruned.first_kept - 1}"
            ) from None
