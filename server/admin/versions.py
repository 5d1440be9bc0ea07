"""`tariff ratecard draft|validate|publish|versions|show|diff|rollback|simulate`: a rate card's versions.

A change to prices is a new DRAFT version (its base plus the changes), validated, then published with the
hour it takes effect from. Rates are given as JSON objects of the wire's `Rate` message (protobuf's JSON
mapping), e.g. `{"product_id": "calls", "match": {"region": "eu"}, "unit": {"price": "0.02"}}`.
On an error a command prints the server's status and message and exits 1. `--actor` (on
every command) names the person the audit log records for a change.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from server.admin.output import (
    UINT32_MAX,
    VERSION_NUMBER,
    Cell,
    pairs,
    parse_decimals,
    parse_pairs,
    print_fields,
    print_json,
    print_table,
)
from server.admin.ratecards import VERSION_COLUMNS, price_text, print_version, version_rows
from server.admin.remote import Remote, as_tariff_error, fail, remote_command

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from tariff import TariffClient
    from tariff.v1 import pricing_pb2

EXIT_INVALID = 1


class UtcTime(click.ParamType[datetime]):
    """An ISO 8601 time (`2026-12-01T00:00:00Z`, `2026-12-01 13:00`); UTC when it names no zone."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (2026-12-01T13:00:00Z)", param, ctx)
        moment = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        try:
            # A protobuf Timestamp holds UTC years 1 to 9999: an offset may carry a time past either end.
            moment.astimezone(UTC)
        except OverflowError:
            self.fail(f"{value!r} is outside years 1 to 9999 in UTC", param, ctx)
        return moment


def utc_text(moment: datetime) -> str:
    """A parsed TIME as the CLI names an instant in a message, in UTC as --json writes it (`2026-12-01T00:00:00Z`):
    an offset as typed (`01:00:00+01:00`) or Python's `+00:00` would make two equal instants read as different."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def timestamp(moment: datetime) -> Timestamp:
    from google.protobuf.timestamp_pb2 import Timestamp

    message = Timestamp()
    message.FromDatetime(moment)
    return message


def parse_json_messages(texts: list[str], message_type: type[Message], what: str) -> list[Any]:
    """JSON objects (protobuf's JSON mapping) as messages; a malformed one is a usage error (exit 2)."""
    from google.protobuf import json_format

    messages = []
    for index, text in enumerate(texts):
        try:
            messages.append(json_format.Parse(text, message_type()))
        except json_format.ParseError as exc:
            raise click.BadParameter(f"item {index}: {exc}", param_hint=what) from None
    return messages


def rates_of_file(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        items = json.loads(path.read_text())
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc})", param_hint="--rates") from None
    if not isinstance(items, list):
        raise click.BadParameter("must hold a JSON array of rates", param_hint="--rates")
    return [json.dumps(item) for item in items]


@click.group()
def ratecard() -> None:
    """Change a rate card's prices: draft, validate, publish, and look at its versions."""


@ratecard.command()
@click.argument("rate_card_id")
@click.option(
    "--base", type=click.IntRange(0, UINT32_MAX), default=0, show_default=True, help="version to start from; 0: empty"
)
@click.option("--set", "set_parameters", multiple=True, metavar="NAME=DECIMAL", help="add or change a parameter")
@click.option("--remove-parameter", "remove_parameters", multiple=True, metavar="NAME", help="drop a parameter")
@click.option("--rate", "rates", multiple=True, metavar="JSON", help="add or replace a rate (a Rate as JSON)")
@click.option(
    "--rates", "rates_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="a JSON array of rates"
)
@click.option(
    "--remove-rate", "remove_rates", multiple=True, metavar="JSON", help='drop a rate: {"product_id", "match"}'
)
@click.option("--note", default="", help="the change note")
@remote_command
def draft(
    remote: Remote,
    rate_card_id: str,
    base: int,
    set_parameters: tuple[str, ...],
    remove_parameters: tuple[str, ...],
    rates: tuple[str, ...],
    rates_file: Path | None,
    remove_rates: tuple[str, ...],
    note: str,
) -> None:
    """Create a DRAFT version of RATE_CARD_ID: version --base plus the changes given.

    \b
    A rate is the wire's Rate as JSON; its prices are decimals or formulas over the parameters, e.g.
      --rate '{"product_id": "calls", "match": {"region": "eu"}, "unit": {"price": "per_call * 1.5"}}'
    """
    from tariff.v1 import pricing_pb2

    request = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=rate_card_id,
        based_on_version=base,
        set_parameters=parse_decimals(set_parameters, "--set"),
        remove_parameters=remove_parameters,
        upsert_rates=[
            *parse_json_messages(list(rates), pricing_pb2.Rate, "--rate"),
            # A file's bad rate is named by the file and its place in it, not counted on from the --rate options.
            *parse_json_messages(rates_of_file(rates_file), pricing_pb2.Rate, f"--rates {rates_file}"),
        ],
        remove_rates=parse_json_messages(list(remove_rates), pricing_pb2.RateKey, "--remove-rate"),
        change_note=note,
    )
    with remote.client() as client:
        version = client.pricing.CreateDraftVersion(request)
        if remote.as_json:
            print_json(version)
            return
        unit = pricing_unit_after_change(client, rate_card_id)
    print_version(version, unit)


def pricing_unit_after_change(client: TariffClient, rate_card_id: str) -> str:
    """The card's pricing unit, for the price column of the version a change made (which does not name it): one more
    read, as `ratecard show` makes. A failed read leaves the column plain `price` rather than fail the command: exit 1
    after the change was made would read as the change failing, and a retried draft makes another version."""
    from tariff.v1 import pricing_pb2

    try:
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=rate_card_id))
    except Exception as exc:
        if as_tariff_error(exc) is None:
            raise
        return ""
    return str(card.pricing_unit)


def print_report(report: pricing_pb2.ValidationReport) -> None:
    from tariff.v1 import pricing_pb2

    rows = [(pricing_pb2.Severity.Name(f.severity), f.path, f.message) for f in report.findings]
    print_table(("severity", "where", "finding"), rows, title="valid" if report.ok else "NOT valid")


@ratecard.command()
@click.argument("rate_card_id")
@click.argument("version", type=VERSION_NUMBER)
@remote_command
def validate(remote: Remote, rate_card_id: str, version: int) -> None:
    """Check a version: every finding, with where it is. Exit status 1 when it has errors."""
    from tariff.v1 import pricing_pb2

    with remote.client() as client:
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=rate_card_id, version=version)
        )
    if remote.as_json:
        print_json(report)
    else:
        print_report(report)
    if not report.ok:
        fail(f"rate card {rate_card_id!r} version {version} is not valid", EXIT_INVALID)


@ratecard.command()
@click.argument("rate_card_id")
@click.argument("version", type=VERSION_NUMBER)
@click.option("--effective-from", type=UtcTime(), help="on an hour boundary [default: now, rounded down to the hour]")
@click.option("--cohort-customer", "cohort_customers", multiple=True, help="cohort: this customer id (repeatable)")
@click.option(
    "--cohort-attribute",
    "cohort_attributes",
    multiple=True,
    metavar="KEY=VALUE",
    help="cohort: customers with this attribute value (repeatable)",
)
@click.option("--cohort-created-after", type=UtcTime(), help="cohort: customers created after this time")
@remote_command
def publish(
    remote: Remote,
    rate_card_id: str,
    version: int,
    effective_from: datetime | None,
    cohort_customers: tuple[str, ...],
    cohort_attributes: tuple[str, ...],
    cohort_created_after: datetime | None,
) -> None:
    """Publish a validated version; it prices usage from --effective-from on.

    With --cohort-* options it prices only the customers of that cohort (every option given must hold);
    without, every customer outside cohorts."""
    from tariff.v1 import pricing_pb2

    request = pricing_pb2.PublishVersionRequest(rate_card_id=rate_card_id, version=version)
    if effective_from is not None:
        request.effective_from.CopyFrom(timestamp(effective_from))
    if cohort_customers or cohort_attributes or cohort_created_after is not None:
        request.cohort.customer_ids.extend(cohort_customers)
        request.cohort.attributes.update(parse_pairs(cohort_attributes, "--cohort-attribute"))
        if cohort_created_after is not None:
            request.cohort.customers_created_after.CopyFrom(timestamp(cohort_created_after))
    with remote.client() as client:
        published = client.pricing.PublishVersion(request)
        unit = "" if remote.as_json else pricing_unit_after_change(client, rate_card_id)
    print_published(remote, published, unit)


def print_published(remote: Remote, published: pricing_pb2.PublishVersionResponse, pricing_unit: str) -> None:
    """A publish's (or rollback's) answer: the version, its price column headed with `pricing_unit`, and what it
    re-rated."""
    if remote.as_json:
        print_json(published)
        return
    print_version(published.version, pricing_unit)
    # One answer, one table: the counts of customers, buckets and closed periods only when any bucket was touched.
    counts: list[tuple[str, Cell]] = [("events re-rated", published.events_rerated)]
    if published.buckets_rerated or published.closed_buckets_left_alone:
        counts += [
            ("customers re-rated", published.customers_rerated),
            ("buckets re-rated", published.buckets_rerated),
            ("re-rated amount delta", published.rerated_amount_delta),
            ("closed-period buckets left alone", published.closed_buckets_left_alone),
            ("closed-period events left alone", published.closed_events_left_alone),
            ("closed-period amount left alone", published.closed_amount_left_alone),
            *([("left alone because", published.left_alone_reason)] if published.left_alone_reason else []),
        ]
    print_fields(counts, title="re-rating")
    if published.validation.findings:
        print_report(published.validation)


@ratecard.command()
@click.argument("rate_card_id")
@remote_command
def versions(remote: Remote, rate_card_id: str) -> None:
    """Every version of a rate card, drafts included (all pages)."""
    with remote.client() as client:
        found = client.list_versions(rate_card_id)
    if remote.as_json:
        print_json({"versions": found})  # ListVersionsResponse's shape, its pages joined
    else:
        print_table(VERSION_COLUMNS, version_rows(found))


@ratecard.command()
@click.argument("rate_card_id")
@click.argument("from_version", type=VERSION_NUMBER)
@click.argument("to_version", type=VERSION_NUMBER)
@remote_command
def diff(remote: Remote, rate_card_id: str, from_version: int, to_version: int) -> None:
    """What changed from FROM_VERSION to TO_VERSION (drafts too): parameters, rates, and each price field
    that differs with its formula and evaluated value on both sides, and the unit of those values (the rate
    card's pricing unit for a price, usage units for up_to, per_units and package_size)."""
    from tariff.v1 import pricing_pb2

    request = pricing_pb2.DiffVersionsRequest(
        rate_card_id=rate_card_id, from_version=from_version, to_version=to_version
    )
    with remote.client() as client:
        changes = client.pricing.DiffVersions(request)
        if remote.as_json:
            print_json(changes)
            return
        if not changes.parameters and not changes.rates:
            click.echo(f"versions {from_version} and {to_version} of {rate_card_id!r} hold the same prices")
            return
        # The prices are in the card's pricing unit, which the answer does not name: one more read for the labels.
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=rate_card_id))
    kind = pricing_pb2.ChangeKind.Name
    print_table(
        ("change", "parameter", f"v{from_version}", f"v{to_version}"),
        [(kind(p.kind), p.name, p.old_value, p.new_value) for p in changes.parameters],
        title="parameters",
    )
    v1, v2 = f"v{from_version}", f"v{to_version}"
    print_table(
        ("change", "product", "match", "field", "unit", f"{v1} formula", f"{v1} value", f"{v2} formula", f"{v2} value"),
        [row for change in changes.rates for row in rate_change_rows(change, card.pricing_unit)],
        title="rates",
    )


# The last part of a PriceFieldChange path naming a price (pricing_pb2 PriceFieldChange.path): its value is in the
# card's pricing unit. The others (up_to, per_units, package_size) are quantities of the product's usage.
PRICE_FIELD_NAMES = frozenset({"price", "unit_price", "flat_price", "package_price"})
QUANTITY_FIELD_NAMES = frozenset({"up_to", "per_units", "package_size"})
USAGE_UNITS = "usage units"


def field_unit(path: str, pricing_unit: str) -> str:
    """What a diffed field's value is counted in: the pricing unit for a price, usage units for a quantity; nothing
    for a field this client does not know (a newer server's), rather than a guess."""
    name = path.rpartition(".")[2]
    if name in PRICE_FIELD_NAMES:
        return pricing_unit
    return USAGE_UNITS if name in QUANTITY_FIELD_NAMES else ""


def rate_change_rows(change: pricing_pb2.RateChange, pricing_unit: str) -> list[tuple[str, ...]]:
    """One row per price field that differs, with the unit its values are in; a rate whose only change is elsewhere
    (its tier mode) gets one row with each side's whole price in one line (`price_text`), whose amounts are in the
    pricing unit, as `ratecards show` heads that line."""
    from tariff.v1 import pricing_pb2

    head = (pricing_pb2.ChangeKind.Name(change.kind), change.key.product_id, pairs(change.key.match) or "*")
    if not change.fields:
        old = price_text(change.old_rate) if change.HasField("old_rate") else ""
        new = price_text(change.new_rate) if change.HasField("new_rate") else ""
        return [(*head, "", pricing_unit, old, "", new, "")]
    return [
        (
            *head,
            f.path,
            field_unit(f.path, pricing_unit),
            f.old_formula,
            f.old_price or f.old_problem,
            f.new_formula,
            f.new_price or f.new_problem,
        )
        for f in change.fields
    ]


@ratecard.command()
@click.argument("rate_card_id")
@click.argument("version", type=VERSION_NUMBER, required=False)
@click.option("--at", type=UtcTime(), help="the version in force at this time (outside cohorts)")
@remote_command
def show(remote: Remote, rate_card_id: str, version: int | None, at: datetime | None) -> None:
    """One version: its state, when it takes effect, its parameters and rates [default: the one in force now for
    every customer outside cohorts]."""
    from tariff.v1 import pricing_pb2

    if version is not None and at is not None:
        raise click.UsageError("give VERSION or --at, not both")
    request = pricing_pb2.GetVersionRequest(rate_card_id=rate_card_id)
    if version is not None:
        request.version = version
    else:
        request.at.CopyFrom(timestamp(at if at is not None else datetime.now(UTC)))
    with remote.client() as client:
        shown = client.pricing.GetVersion(request)
        if remote.as_json:
            print_json(shown)
            return
        # The prices are in the card's pricing unit, which the version does not name: one more read for the label.
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=rate_card_id))
    print_version(shown, card.pricing_unit)


@ratecard.command()
@click.argument("rate_card_id")
@click.argument("to_version", type=VERSION_NUMBER)
@click.option("--effective-from", type=UtcTime(), help="on an hour boundary [default: now, rounded down to the hour]")
@remote_command
def rollback(remote: Remote, rate_card_id: str, to_version: int, effective_from: datetime | None) -> None:
    """Restore TO_VERSION's prices: publish a copy of it as a new version, from --effective-from.

    Nothing is rewritten: the copy is the newest version, and says which version it replaced. A retry (the same
    TO_VERSION, while its copy is in force) answers as the first call did."""
    from tariff.v1 import pricing_pb2

    request = pricing_pb2.RollbackRateCardRequest(rate_card_id=rate_card_id, to_version=to_version)
    if effective_from is not None:
        request.effective_from.CopyFrom(timestamp(effective_from))
    with remote.client() as client:
        published = client.pricing.RollbackRateCard(request)
        unit = "" if remote.as_json else pricing_unit_after_change(client, rate_card_id)
    print_published(remote, published, unit)
