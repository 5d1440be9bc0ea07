"""`tariff ratecards list|show|create`: the rate cards a server holds, and how a version's rates print."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from server.admin.output import VERSION_NUMBER, pairs, print_fields, print_json, print_table, unit_suffix, when
from server.admin.remote import Remote, remote_command

if TYPE_CHECKING:
    from tariff.v1 import pricing_pb2


def price_text(rate: pricing_pb2.Rate) -> str:
    """A rate's price in one line: `0.5 per 1000`, `graduated: up to 100 at 0.1; then at 0.05`, ..."""
    from tariff.v1 import pricing_pb2

    kind = rate.WhichOneof("price")
    if kind == "unit":
        per = f" per {rate.unit.per_units}" if rate.unit.per_units not in ("", "1") else ""
        return f"{rate.unit.price}{per}"
    if kind == "tiered":
        tiers = "; ".join(
            (f"up to {t.up_to}" if t.up_to else "then")
            + f" at {t.unit_price or '0'}"
            + (f" + {t.flat_price} flat" if t.flat_price else "")
            for t in rate.tiered.tiers
        )
        return f"{pricing_pb2.TierMode.Name(rate.tiered.mode).lower()}: {tiers}"
    if kind == "package":
        return f"{rate.package.package_price} per package of {rate.package.package_size}"
    if kind == "flat":
        return f"{rate.flat.price} flat per period"
    return "(no price)"


def print_version(version: pricing_pb2.RateCardVersion, pricing_unit: str) -> None:
    """The version's fields, parameters and rates; the rates' price column headed with the card's `pricing_unit`
    (which a version does not carry), unlabelled when the command has not read it (empty)."""
    from tariff.v1 import pricing_pb2

    print_fields(
        [
            ("rate card", version.rate_card_id),
            ("version", version.version),
            ("state", pricing_pb2.VersionState.Name(version.state)),
            ("based on", version.based_on_version or ""),
            ("effective from", when(version.effective_from, version.HasField("effective_from"))),
            ("change note", version.change_note),
            ("created by", version.created_by),
            *rollback_fields(version),
            *cohort_fields(version),
        ],
        title=f"version {version.version}",
    )
    print_table(("name", "value"), sorted(version.parameters.items()), title="parameters")
    rows = [(r.product_id, pairs(r.match) or "*", price_text(r)) for r in version.rates]
    # Parameters are plain decimals (a factor, a price), so only the price column says a unit.
    print_table(("product", "match", "price" + unit_suffix(pricing_unit)), rows, title="rates")


def cohort_fields(version: pricing_pb2.RateCardVersion) -> list[tuple[str, str]]:
    """A cohort version's cohort (its criteria, all of which must hold); nothing for a version for everyone."""
    if not version.HasField("cohort"):
        return []
    cohort = version.cohort
    criteria = []
    if cohort.customer_ids:
        criteria.append("customers " + ", ".join(cohort.customer_ids))
    if cohort.attributes:
        criteria.append("attributes " + pairs(cohort.attributes))
    if cohort.HasField("customers_created_after"):
        criteria.append("created after " + when(cohort.customers_created_after, True))
    return [("cohort", "; ".join(criteria))]


def rollback_fields(version: pricing_pb2.RateCardVersion) -> list[tuple[str, str]]:
    """A rollback's versions, for a version RollbackRateCard made; nothing for any other."""
    if not version.rollback_to_version:
        return []
    return [("rollback", f"of version {version.rollback_from_version} to version {version.rollback_to_version}")]


def version_rows(versions: Any) -> list[tuple[Any, ...]]:
    from tariff.v1 import pricing_pb2

    return [
        (
            v.version,
            pricing_pb2.VersionState.Name(v.state),
            v.based_on_version or "",
            when(v.effective_from, v.HasField("effective_from")),
            priced_customers(v),
            v.created_by,
            v.change_note,
        )
        for v in versions
    ]


VERSION_COLUMNS = ("version", "state", "based on", "effective from", "prices", "created by", "change note")


def priced_customers(version: pricing_pb2.RateCardVersion) -> str:
    """Whom a published version prices: everyone (outside cohorts) or its cohort; a draft prices no one."""
    from tariff.v1 import pricing_pb2

    if version.state != pricing_pb2.PUBLISHED:
        return ""
    cohort = cohort_fields(version)
    return cohort[0][1] if cohort else "everyone"


@click.group()
def ratecards() -> None:
    """Look at and create rate cards (their versions: `tariff ratecard`)."""


@ratecards.command("list")
@click.option("--page-size", type=click.IntRange(1, 1_000), default=100, show_default=True, help="rate cards per call")
@remote_command
def list_rate_cards(remote: Remote, page_size: int) -> None:
    """Every rate card (all pages)."""
    with remote.client() as client:
        found = client.list_rate_cards(page_size=page_size)
    if remote.as_json:
        print_json({"rate_cards": found})
        return
    rows = [(c.id, c.name, c.pricing_unit, c.current_version or "", c.latest_version) for c in found]
    print_table(("id", "name", "pricing unit", "current version", "latest version"), rows)


@ratecards.command("show")
@click.argument("rate_card_id")
@click.option("--version", type=VERSION_NUMBER, help="the version whose rates to show [default: the current one]")
@remote_command
def show_rate_card(remote: Remote, rate_card_id: str, version: int | None) -> None:
    """A rate card, its versions, and the rates of its current version (or --version)."""
    from tariff.v1 import pricing_pb2

    with remote.client() as client:
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=rate_card_id))
        versions = client.list_versions(rate_card_id)  # every page: a card may have more versions than one holds
        number = version or card.current_version
        shown = None
        if number:
            shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=rate_card_id, version=number))
    if remote.as_json:
        print_json({"rate_card": card, "versions": versions, "version": shown})
        return
    print_fields(
        [
            ("id", card.id),
            ("name", card.name),
            ("pricing unit", card.pricing_unit),
            ("current version", card.current_version or "none"),
            ("latest version", card.latest_version),
            ("created", when(card.created_at, card.HasField("created_at"))),
        ]
    )
    print_table(VERSION_COLUMNS, version_rows(versions), title="versions")
    if shown is not None:
        print_version(shown, card.pricing_unit)


@ratecards.command("create")
@click.argument("rate_card_id")
@click.option("--name", default="", help="display name")
@click.option(
    "--unit", "pricing_unit", required=True, help='pricing unit: "credits" or an ISO 4217 currency code ("USD")'
)
@remote_command
def create_rate_card(remote: Remote, rate_card_id: str, name: str, pricing_unit: str) -> None:
    """Create an empty rate card; give it prices with `tariff ratecard draft`."""
    from tariff.v1 import pricing_pb2

    request = pricing_pb2.CreateRateCardRequest(id=rate_card_id, name=name, pricing_unit=pricing_unit)
    with remote.client() as client:
        card = client.pricing.CreateRateCard(request)
    if remote.as_json:
        print_json(card)
    else:
        print_fields([("id", card.id), ("name", card.name), ("pricing unit", card.pricing_unit)])
