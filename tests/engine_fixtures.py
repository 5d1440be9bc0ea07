"""Builders for engine tests: set up the control plane (an Engine) through commands, as a domain story, with a
running journal seq.

Every change goes through `Engine.apply`, so a test's state is one the journal could have produced; usage goes
to the kernel (tests/kernel_fixtures.py).
Times are explicit Unix milliseconds counted from EPOCH_MS (2026-01-01T00:00Z); nothing reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from engine import commands as cmd
from engine.contracts import Contract, Customer, OveragePolicy, Override
from engine.ledger import Grant, GrantKind
from engine.money import PICOS_PER_UNIT, to_picos
from engine.products import Aggregation, Product
from engine.ratecard import (
    FlatPrice,
    PackagePrice,
    PriceSpec,
    Rate,
    RateCard,
    Tier,
    TieredPrice,
    TierMode,
    UnitPrice,
    Version,
    normalize_match,
)
from engine.state import Engine
from engine.versions import PublishResult

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
ACTOR = "test"


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Unix ms of a UTC wall-clock time."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()) * 1000


def picos(text: str) -> int:
    """An exact decimal amount (given as text) in picos: picos("0.045") == 45_000_000_000."""
    value = Decimal(text)
    assert to_picos(value) == value * PICOS_PER_UNIT, f"{text} is not a whole number of picos"
    return to_picos(value)


# Price specs and rates ---------------------------------------------------------------------------------------


def unit(price: str, per_units: str = "") -> UnitPrice:
    return UnitPrice(price=price, per_units=per_units)


def tiered(mode: TierMode, *tiers: tuple[str, str] | tuple[str, str, str], per_units: str = "") -> TieredPrice:
    """Tiers as (up_to, unit_price[, flat_price]); up_to "" on the last, unbounded tier."""
    return TieredPrice(mode=mode, tiers=tuple(Tier(*t) for t in tiers), per_units=per_units)


def package(size: str, price: str) -> PackagePrice:
    return PackagePrice(package_size=size, package_price=price)


def flat(price: str) -> FlatPrice:
    return FlatPrice(price=price)


def rate(product_id: str, price: PriceSpec, **match: str) -> Rate:
    """A rate as the server builds it from the wire: "*" entries normalized away."""
    return Rate(product_id=product_id, match=normalize_match(match), price=price)


# The world: an Engine driven through commands ----------------------------------------------------------------


@dataclass
class World:
    engine: Engine = field(default_factory=Engine)
    # Every command applied, in journal order (what a replay would feed a fresh Engine).
    journal: list[cmd.AdminCommand] = field(default_factory=list)

    @property
    def seq(self) -> int:
        return self.engine.state.last_seq

    def apply(self, command: cmd.AdminCommand) -> object:
        """Applies one command as the next journal record; a refused command (EngineError) is not journaled."""
        result = self.engine.apply(command, self.seq + 1)
        self.journal.append(command)
        return result

    # Catalogue ---------------------------------------------------------------------------------------------

    def product(
        self,
        product_id: str,
        *,
        event_type: str = "ai",
        aggregation: Aggregation = Aggregation.SUM,
        value_key: str = "tokens",
        dimensions: Sequence[str] = ("model", "region"),
        filters: Mapping[str, str] | None = None,
        at_ms: int = EPOCH_MS,
        empty_count_missing: bool = False,
        empty_filter_missing: bool = False,
    ) -> Product:
        result = self.apply(
            cmd.CreateProduct(
                at_ms=at_ms,
                actor=ACTOR,
                id=product_id,
                name=product_id,
                event_type=event_type,
                aggregation=aggregation,
                value_key=value_key,
                filters=dict(filters or {}),
                pricing_dimensions=tuple(dimensions),
                unit="units",
                empty_count_missing=empty_count_missing,
                empty_filter_missing=empty_filter_missing,
            )
        )
        assert isinstance(result, Product)
        return result

    def rate_card(self, card_id: str = "card", *, pricing_unit: str = "credits", at_ms: int = EPOCH_MS) -> RateCard:
        result = self.apply(
            cmd.CreateRateCard(at_ms=at_ms, actor=ACTOR, id=card_id, name=card_id, pricing_unit=pricing_unit)
        )
        assert isinstance(result, RateCard)
        return result

    def draft(
        self,
        rates: Sequence[Rate] = (),
        *,
        card_id: str = "card",
        parameters: Mapping[str, str] | None = None,
        based_on: int = 0,
        remove_rates: Sequence[cmd.RemoveRate] = (),
        at_ms: int = EPOCH_MS,
    ) -> Version:
        result = self.apply(
            cmd.CreateDraftVersion(
                at_ms=at_ms,
                actor=ACTOR,
                rate_card_id=card_id,
                based_on_version=based_on,
                set_parameters=dict(parameters or {}),
                remove_parameters=(),
                upsert_rates=tuple(rates),
                remove_rates=tuple(remove_rates),
                change_note="",
            )
        )
        assert isinstance(result, Version)
        return result

    def publish(
        self, version: int, *, effective_from_ms: int | None = EPOCH_MS, card_id: str = "card", at_ms: int = EPOCH_MS
    ) -> PublishResult:
        result = self.apply(
            cmd.PublishVersion(
                at_ms=at_ms, actor=ACTOR, rate_card_id=card_id, version=version, effective_from_ms=effective_from_ms
            )
        )
        assert isinstance(result, PublishResult)
        return result

    def version(
        self,
        rates: Sequence[Rate] = (),
        *,
        card_id: str = "card",
        parameters: Mapping[str, str] | None = None,
        based_on: int = 0,
        effective_from_ms: int = EPOCH_MS,
        at_ms: int = EPOCH_MS,
    ) -> int:
        """A draft, published at once; returns its number."""
        draft = self.draft(rates, card_id=card_id, parameters=parameters, based_on=based_on, at_ms=at_ms)
        self.publish(draft.number, effective_from_ms=effective_from_ms, card_id=card_id, at_ms=at_ms)
        return draft.number

    # Customers, contracts, grants --------------------------------------------------------------------------

    def customer(
        self, customer_id: str = "acme", *, attributes: Mapping[str, str] | None = None, at_ms: int = EPOCH_MS
    ) -> Customer:
        result = self.apply(
            cmd.CreateCustomer(
                at_ms=at_ms, actor=ACTOR, id=customer_id, name=customer_id, attributes=dict(attributes or {})
            )
        )
        assert isinstance(result, Customer)
        return result

    def contract(
        self,
        contract_id: str = "c-acme",
        *,
        customer_id: str = "acme",
        card_id: str = "card",
        starting_at_ms: int | None = EPOCH_MS,
        ending_before_ms: int | None = None,
        overage_policy: OveragePolicy = OveragePolicy.ALLOW,
        overage_price: str = "1",
        at_ms: int = EPOCH_MS,
    ) -> Contract:
        result = self.apply(
            cmd.CreateContract(
                at_ms=at_ms,
                actor=ACTOR,
                id=contract_id,
                customer_id=customer_id,
                rate_card_id=card_id,
                starting_at_ms=starting_at_ms,
                ending_before_ms=ending_before_ms,
                overage_policy=overage_policy,
                overage_price=overage_price,
                currency="USD",
            )
        )
        assert isinstance(result, Contract)
        return result

    def override(
        self,
        product_id: str,
        *,
        contract_id: str = "c-acme",
        multiplier: str | None = None,
        price: str | None = None,
        match: Mapping[str, str] | None = None,
        starting_at_ms: int = EPOCH_MS,
        ending_before_ms: int | None = None,
        override_id: str = "o1",
        at_ms: int = EPOCH_MS,
        multiplier_reduced: bool = False,
    ) -> Contract:
        result = self.apply(
            cmd.AddOverride(
                at_ms=at_ms,
                actor=ACTOR,
                contract_id=contract_id,
                override=Override(
                    id=override_id,
                    product_id=product_id,
                    match=normalize_match(match or {}),
                    multiplier=multiplier,
                    price=price,
                    starting_at_ms=starting_at_ms,
                    ending_before_ms=ending_before_ms,
                ),
                multiplier_reduced=multiplier_reduced,
            )
        )
        assert isinstance(result, Contract)
        return result

    def grant_command(
        self,
        grant_id: str,
        amount: str,
        *,
        customer_id: str = "acme",
        contract_id: str = "",
        kind: GrantKind | None = GrantKind.PREPAID,
        paid: str = "0",
        priority: int = 0,
        products: Sequence[str] = (),
        starts_at_ms: int | None = EPOCH_MS,
        expires_at_ms: int | None = None,
        rollover_fraction: str = "",
        at_ms: int = EPOCH_MS,
    ) -> cmd.GrantCredits:
        return cmd.GrantCredits(
            at_ms=at_ms,
            actor=ACTOR,
            id=grant_id,
            customer_id=customer_id,
            contract_id=contract_id,
            kind=kind,
            amount=amount,
            paid_amount=paid,
            priority=priority,
            applicable_product_ids=tuple(products),
            starts_at_ms=starts_at_ms,
            expires_at_ms=expires_at_ms,
            rollover_fraction=rollover_fraction,
        )

    def grant(
        self,
        grant_id: str,
        amount: str,
        *,
        customer_id: str = "acme",
        kind: GrantKind = GrantKind.PREPAID,
        paid: str = "0",
        priority: int = 0,
        products: Sequence[str] = (),
        starts_at_ms: int | None = EPOCH_MS,
        expires_at_ms: int | None = None,
    ) -> Grant:
        result = self.apply(
            self.grant_command(
                grant_id,
                amount,
                customer_id=customer_id,
                kind=kind,
                paid=paid,
                priority=priority,
                products=products,
                starts_at_ms=starts_at_ms,
                expires_at_ms=expires_at_ms,
            )
        )
        assert isinstance(result, Grant)
        return result

    def grant_by_id(self, grant_id: str, customer_id: str = "acme") -> Grant:
        return next(g for g in self.engine.state.accounts[customer_id].grants if g.id == grant_id)


def basic_world(
    rates: Sequence[Rate] | None = None,
    *,
    aggregation: Aggregation = Aggregation.SUM,
    value_key: str = "tokens",
    parameters: Mapping[str, str] | None = None,
    overage_policy: OveragePolicy = OveragePolicy.ALLOW,
    overage_price: str = "1",
    contract_start_ms: int = EPOCH_MS,
    contract_end_ms: int | None = None,
    extra_products: Sequence[str] = (),
) -> World:
    """Product "tokens" (event type "ai", dimensions model and region), rate card "card" with version 1 in
    force from EPOCH (by default one credit per unit), customer "acme" with contract "c-acme" from EPOCH.
    Each of `extra_products` is a SUM of "tokens" on an event type of its own name."""
    world = World()
    world.product("tokens", aggregation=aggregation, value_key=value_key)
    for product_id in extra_products:
        world.product(product_id, event_type=product_id)
    world.rate_card("card")
    world.version(rates if rates is not None else [rate("tokens", unit("1"))], parameters=parameters)
    world.customer("acme")
    world.contract(
        "c-acme",
        starting_at_ms=contract_start_ms,
        ending_before_ms=contract_end_ms,
        overage_policy=overage_policy,
        overage_price=overage_price,
    )
    return world
