"""RollbackRateCard: restores an earlier version's prices by publishing a copy of it as a new version.

History is never rewritten: the copy is a new version (based on the one it copies, `rollback_to`, and naming the
version it replaced, `rollback_from`, in its change note) and is published through PublishVersion's own path
(`_publish`), so a rollback effective before already rated usage is re-rated as a retroactive publish
is (engine/rerate.py plans it from the version copied). If that path refuses, the copy is withdrawn and nothing has changed.

A retry is recognised from the state, with no key of its own: when the version in force at the requested hour
is the copy that a rollback to the same version made (from that same hour, when the request names one), the
request is answered as the first call was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import commands as cmd
from engine.control import ControlPlane
from engine.errors import EngineError, FailedPrecondition, InvalidArgument, Repeated
from engine.instants import iso
from engine.ratecard import HOUR_MS, RateCard, Version, VersionState, validate
from engine.versions import PublishResult


class RollbackCommands(ControlPlane):
    if TYPE_CHECKING:

        def _publish(self, c: cmd.PublishVersion) -> PublishResult: ...

    def _rollback(self, c: cmd.RollbackRateCard) -> PublishResult:
        card = self.rate_card(c.rate_card_id)
        asked = rollback_asked(card, c)
        if asked.retry:
            raise Repeated(
                PublishResult(asked.in_force, 0, validate(asked.in_force, self.state.products, rounded_in_range=False))
            )
        if asked.already_in_force:
            raise FailedPrecondition(_already_in_force(card, asked.in_force, asked.target, asked.effective_from_ms))
        copy = _copy(card, asked.target, asked.in_force, asked.effective_from_ms, c)
        card.versions.append(copy)
        try:
            return self._publish(cmd.PublishVersion(c.at_ms, c.actor, card.id, copy.number, asked.effective_from_ms))
        except EngineError:
            card.versions.pop()  # the publish path refused: withdraw the copy, so that nothing has changed
            raise


@dataclass(frozen=True, slots=True)
class RollbackAsked:
    """What a RollbackRateCard asks of its card's state: the version it copies, the hour, and the version in force
    (outside cohorts) then, which a copy would replace."""

    card: RateCard
    target: Version
    in_force: Version
    effective_from_ms: int
    named_from_ms: int | None  # the request's effective_from (None: the hour it is applied in)

    @property
    def retry(self) -> bool:
        """The version in force is the copy a rollback to the same version made (from that same hour, when the
        request names one): the request is answered as that rollback was, changing nothing."""
        return self.in_force.rollback_to == self.target.number and self.named_from_ms in (
            None,
            self.in_force.effective_from_ms,
        )

    @property
    def already_in_force(self) -> bool:
        """The target's prices are in force then already (itself, or a copy of them by rollbacks): refused."""
        return origin(self.card, self.in_force) == origin(self.card, self.target)

    @property
    def publishes(self) -> bool:
        """Whether the rollback publishes a copy (and so may re-rate): neither a retry nor refused as in force."""
        return not self.retry and not self.already_in_force


def rollback_asked(card: RateCard, c: cmd.RollbackRateCard) -> RollbackAsked:
    """What the rollback asks, or its refusal, changing nothing: NotFound for an unknown version, FailedPrecondition
    for a draft or when no version is in force at the hour, InvalidArgument for an hour that is not one."""
    target = card.version(c.to_version)
    if target.state is VersionState.DRAFT:
        raise FailedPrecondition(
            f"version {target.number} of rate card {card.id!r} is a draft: only a published version can be "
            "rolled back to (publish the draft instead)"
        )
    effective_from_ms = c.effective_from_ms if c.effective_from_ms is not None else c.at_ms - c.at_ms % HOUR_MS
    if effective_from_ms % HOUR_MS:
        raise InvalidArgument.field("effective_from", "must be on an hour boundary (UTC)")
    in_force_number = card.version_number_at(effective_from_ms)
    if in_force_number is None:
        raise FailedPrecondition(
            f"rate card {card.id!r} has no version in force at {iso(effective_from_ms)}: there is nothing to roll "
            "back from"
        )
    return RollbackAsked(card, target, card.version(in_force_number), effective_from_ms, c.effective_from_ms)


def origin(card: RateCard, version: Version) -> int:
    """The version whose prices `version` holds: itself, or what its rollback chain copies in the end."""
    while version.rollback_to:
        version = card.version(version.rollback_to)
    return version.number


def _already_in_force(card: RateCard, in_force: Version, target: Version, effective_from_ms: int) -> str:
    which = f"version {in_force.number}"
    source = origin(card, in_force)
    if source == in_force.number != target.number:
        # The version in force is the original the target copies: calling it a copy of itself would mislead.
        which += f" (whose prices version {target.number} copies)"
    elif in_force.number != target.number:
        which += f" (a copy of version {source}, the prices of version {target.number})"
    return (
        f"rate card {card.id!r}: {which} is already in force at {iso(effective_from_ms)}; rolling back to version "
        f"{target.number} would change nothing"
    )


def _copy(
    card: RateCard, target: Version, replaced: Version, effective_from_ms: int, c: cmd.RollbackRateCard
) -> Version:
    return Version(
        rate_card_id=card.id,
        number=len(card.versions) + 1,
        state=VersionState.DRAFT,
        based_on=target.number,
        parameters=dict(target.parameters),
        rates=list(target.rates),
        change_note=(
            f"rollback of version {replaced.number} to version {target.number}: a copy of version {target.number}, "
            f"effective from {iso(effective_from_ms)}"
        ),
        created_at_ms=c.at_ms,
        created_by=c.actor,
        rollback_to=target.number,
        rollback_from=replaced.number,
    )
