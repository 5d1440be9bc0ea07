"""`tariff alerts create|list|delete|watch`: alert rules, and the alerts they fire as they are committed
(AlertService)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from server.admin.output import (
    JOURNAL_SEQ,
    decimal_option,
    echo_line,
    message_dict,
    pairs,
    print_json,
    print_table,
    when,
)
from server.admin.remote import Remote, remote_command, until_interrupted

if TYPE_CHECKING:
    from tariff import TariffClient
    from tariff.v1 import alerts_pb2

ALERT_TYPES = ("LOW_BALANCE", "SPEND_THRESHOLD", "CREDITS_EXHAUSTED", "TOP_UP_EXECUTED", "RESERVATION_EXPIRED")


@click.group()
def alerts() -> None:
    """Alert rules and the alerts they fire."""


def _rule_row(rule: alerts_pb2.AlertRule) -> tuple[str, str, str, str]:
    from tariff.v1 import alerts_pb2

    return (rule.id, "(all)" if rule.all else rule.customer_id, alerts_pb2.AlertType.Name(rule.type), rule.threshold)


@alerts.command("create")
@click.option("--customer", "customer_id", help="the customer the rule watches")
@click.option("--all", "all_customers", is_flag=True, help="watch every customer instead")
@click.option(
    "--type", "alert_type", type=click.Choice(ALERT_TYPES, case_sensitive=False), required=True, help="what fires it"
)
@click.option(
    "--threshold",
    callback=decimal_option,
    help="a decimal in the pricing unit: LOW_BALANCE and SPEND_THRESHOLD need one",
)
@click.option("--id", "rule_id", default="", help="the rule's id (the retry key)  [default: from its content]")
@remote_command
def create(
    remote: Remote, customer_id: str | None, all_customers: bool, alert_type: str, threshold: str | None, rule_id: str
) -> None:
    """Create an alert rule for one customer (--customer) or all (--all). Running it again creates nothing more."""
    from tariff.v1 import alerts_pb2

    if bool(customer_id) == all_customers:
        raise click.UsageError("give exactly one of --customer ID and --all")
    threshold_text = threshold or ""  # none given: the server says whether the type needs one
    if all_customers:
        request = alerts_pb2.CreateAlertRequest(all=True, type=alert_type, threshold=threshold_text, id=rule_id)
    else:
        request = alerts_pb2.CreateAlertRequest(
            customer_id=customer_id, type=alert_type, threshold=threshold_text, id=rule_id
        )
    with remote.client() as client:
        rule = client.alerts.CreateAlert(request)
    if remote.as_json:
        print_json(rule)
        return
    print_table(("id", "customer", "type", "threshold"), [_rule_row(rule)])


def all_rules(client: TariffClient) -> Iterator[alerts_pb2.AlertRule]:
    from tariff.v1 import alerts_pb2

    token = ""
    while True:
        page = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=1_000, page_token=token))
        yield from page.rules
        token = page.next_page_token
        if not token:
            return


@alerts.command("list")
@remote_command
def list_rules(remote: Remote) -> None:
    """Every alert rule, in id order."""
    with remote.client() as client:
        found = list(all_rules(client))
    if remote.as_json:
        print_json({"rules": found})
        return
    print_table(("id", "customer", "type", "threshold"), [_rule_row(rule) for rule in found])


@alerts.command("delete")
@click.argument("rule_id", metavar="ID")
@remote_command
def delete(remote: Remote, rule_id: str) -> None:
    """Delete the alert rule ID: it fires no more; the alerts it fired stay. Running it again deletes nothing more.
    A deleted rule's id is not used again."""
    from tariff.v1 import alerts_pb2

    with remote.client() as client:
        rule = client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=rule_id))
    if remote.as_json:
        print_json(rule)
        return
    print_table(("id", "customer", "type", "threshold"), [_rule_row(rule)])


def alert_line(alert: alerts_pb2.Alert) -> str:
    from tariff.v1 import alerts_pb2

    kind = alerts_pb2.AlertType.Name(alert.type)
    return f"{alert.seq}  {when(alert.time)}  {kind}  {alert.customer_id}  {alert.message}  [{pairs(alert.details)}]"


@alerts.command("watch")
@click.option("--after", "after_seq", type=JOURNAL_SEQ, default=0, show_default=True, help="alerts after this seq")
@click.option("--count", type=click.IntRange(1), help="stop after this many alerts  [default: never]")
@remote_command
@until_interrupted
def watch_alerts(remote: Remote, after_seq: int, count: int | None) -> None:
    """Every alert after --after (0: the oldest kept), then each new one as it is committed. Pass the last seq
    printed as --after to resume without missing or repeating one. With --json, one JSON object a line."""
    from tariff.v1 import alerts_pb2

    with remote.client() as client:
        stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=after_seq))
        for seen, alert in enumerate(stream, start=1):
            if remote.as_json:
                click.echo(json.dumps(message_dict(alert)))
            else:
                echo_line(alert_line(alert))
            if count is not None and seen >= count:
                stream.cancel()
                return
