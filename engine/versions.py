"""Rate cards and their versions: CreateRateCard, CreateDraftVersion, ValidateVersion, PublishVersion."""

from __future__ import annotations

import bisect

import msgspec

from engine import commands as cmd
from engine.cohorts import checked_cohort
from engine.control import ControlPlane, check_applied_id, fingerprint, same_request
from engine.errors import (
    MADE_BY_ANOTHER_REQUEST,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LimitReached,
    Repeated,
)
from engine.money import parse_decimal
from engine.ratecard import (
    DRAFTS_PER_RATE_CARD_MAX,
    HOUR_MS,
    Finding,
    RateCard,
    Severity,
    Version,
    VersionState,
    check_publishable,
    make_draft,
    rate_key,
    validate,
)


class PublishResult(msgspec.Struct, frozen=True):
    version: Version
    events_rerated: int
    findings: list[Finding]
    # What re-rating did (engine/rerate.py): customers and hour buckets changed, the net change, and the usage
    # left alone in closed periods.
    customers_rerated: int = 0
    buckets_rerated: int = 0
    rerated_amount_delta_picos: int = 0
    closed_buckets_left_alone: int = 0
    closed_events_left_alone: int = 0
    closed_amount_left_alone_picos: int = 0


class VersionCommands(ControlPlane):
    def _create_rate_card(self, c: cmd.CreateRateCard) -> RateCard:
        check_applied_id(c.id, "id")
        if not c.pricing_unit:
            raise InvalidArgument.field("pricing_unit", 'is required: "credits" or an ISO currency such as "USD"')
        key = f"rate_card/{c.id}"
        print_ = self._repeat(key, c, lambda: self.state.rate_cards[c.id])
        if c.id in self.state.rate_cards:
            raise AlreadyExists(f"rate card {c.id!r} already exists{MADE_BY_ANOTHER_REQUEST}")
        card = RateCard(c.id, c.name or c.id, c.pricing_unit, c.at_ms)
        self.state.rate_cards[c.id] = card
        self._remember(key, print_)
        return card

    def _create_draft(self, c: cmd.CreateDraftVersion) -> Version:
        card = self.rate_card(c.rate_card_id)
        key = f"rate_card/{card.id}/draft/{c.request_id}"
        print_ = b""
        if c.request_id:
            check_applied_id(c.request_id, "request_id")
            mark = self.state.requests.get(key)
            if mark is not None:
                if not same_request(mark.fingerprint, c):
                    raise AlreadyExists(
                        f"request_id {c.request_id!r} already made version {mark.version} of rate card {card.id!r} "
                        "from a different request: use a new request_id for a new draft"
                    )
                raise Repeated(card.version(mark.version))
            print_ = fingerprint(c)
        if c.based_on_version:
            card.version(c.based_on_version)
        if c.drafts_bounded:
            _check_draft_room(card)
        violations = []
        for name, value in c.set_parameters.items():
            if not name.isidentifier():
                violations.append((f"set_parameters[{name}]", "a parameter name must be an identifier"))
            try:
                parse_decimal(value, f"set_parameters[{name}]", allow_negative=True)
            except InvalidArgument as exc:
                violations.extend(exc.violations)
        for index, rate in enumerate(c.upsert_rates):
            if not rate.product_id:
                violations.append((f"upsert_rates[{index}].product_id", "is required"))
        if violations:
            raise InvalidArgument(violations)
        version = make_draft(
            card,
            based_on=c.based_on_version,
            set_parameters=c.set_parameters,
            remove_parameters=c.remove_parameters,
            upsert_rates=c.upsert_rates,
            remove_rates=[rate_key(r.product_id, r.match) for r in c.remove_rates],
            change_note=c.change_note,
            at_ms=c.at_ms,
            actor=c.actor,
        )
        card.versions.append(version)
        if c.request_id:
            self._remember(key, print_, version.number)
        return version

    def validate_version(self, rate_card_id: str, number: int) -> list[Finding]:
        return validate(self.rate_card(rate_card_id).version(number), self.state.products)

    def _publish(self, c: cmd.PublishVersion) -> PublishResult:
        card = self.rate_card(c.rate_card_id)
        version = card.version(c.version)
        cohort = checked_cohort(c.cohort, self.state.customers)
        if version.state is VersionState.PUBLISHED and c.effective_from_ms in (None, version.effective_from_ms):
            if cohort != version.cohort:
                raise FailedPrecondition(
                    f"version {version.number} of {card.id!r} is already published for another cohort: a version's "
                    "cohort is fixed when it is published; publish a new draft based on it for this cohort"
                )
            # Publishing what is published, from the same time, for the same cohort: a retry. Answered as the
            # first call was.
            checked = validate(version, self.state.products, rounded_in_range=c.prices_rounded_in_range)
            raise Repeated(PublishResult(version, 0, checked))
        effective_from_ms = c.effective_from_ms if c.effective_from_ms is not None else c.at_ms - c.at_ms % HOUR_MS
        check_publishable(version, effective_from_ms)
        findings = validate(version, self.state.products, rounded_in_range=c.prices_rounded_in_range)
        errors = [f for f in findings if f.severity is Severity.ERROR]
        if errors:
            raise InvalidArgument([(f"version.{f.path}", f.message) for f in errors], listed_by="ValidateVersion")
        version.state = VersionState.PUBLISHED
        version.effective_from_ms = effective_from_ms
        version.published_at_ms = c.at_ms
        version.cohort = cohort
        # After any entry with the same effective_from: of two versions effective at once, the later published wins.
        bisect.insort_right(card.timeline, (effective_from_ms, version.number), key=lambda entry: entry[0])
        # Usage already rated in the hours it now prices is re-rated by engine/billing.py (engine/rerate.py).
        return PublishResult(version, 0, findings)


def _check_draft_room(card: RateCard) -> None:
    """RESOURCE_EXHAUSTED when the card holds as many unpublished drafts as it may (a retry of one of them was
    answered before this is asked)."""
    drafts = sum(1 for version in card.versions if version.state is VersionState.DRAFT)
    if drafts >= DRAFTS_PER_RATE_CARD_MAX:
        raise LimitReached(
            f"rate card {card.id!r} holds {drafts:,} unpublished drafts, the most a rate card may hold "
            f"({DRAFTS_PER_RATE_CARD_MAX:,}): publish one of them, or draft on another rate card"
        )
