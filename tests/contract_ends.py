"""EndContract steps drawn for the differential tests: when in a generated run a contract's end is requested, and
the end each step names relative to the time it is requested (tests/test_wire_differential.py first drew them); and
the control plane's answer to one, in the oracle's terms (tests/test_kernel_differential.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from hypothesis import strategies as st

from engine import commands as cmd
from engine.errors import FailedPrecondition, InvalidArgument, Repeated
from tests.engine_fixtures import ACTOR, DAY_MS, HOUR_MS, MINUTE_MS, World
from tests.reference_billing import ReferenceRating


@dataclass(frozen=True)
class EndStep:
    """EndContract of the example's contract, requested before batch `before_batch`, at an end drawn relative to
    the time it is requested (`end_at`):
    "start": the contract's start plus `offset_ms` (0 or an hour before: INVALID_ARGUMENT; a millisecond after:
    retroactive); "past": `offset_ms` before now; "soon": `offset_ms` after now; "hour": the start of the hour
    `hours` after the current one, plus `offset_ms` (on the hour, a millisecond, 10 minutes or all but a
    millisecond into it); "usage": the timestamp of a "soon" event sent so far (the `hours`-th, cycling) plus
    `offset_ms` (a millisecond before, at, a millisecond after, an hour before); "usage-hour": the start of that
    event's hour, plus `offset_ms` (the hour itself, or the next one); "again": the end the contract has (a
    retry). Without a "soon" event sent, "usage" kinds are "hour"s; without an end, "again" is one. `wait`: first
    until the end the contract has passes, when it is within two seconds (so that an end that has passed is
    requested to move, and later usage comes after it)."""

    before_batch: int
    kind: str
    hours: int
    offset_ms: int
    wait: bool = False


END_OFFSETS = {
    "start": [0, -HOUR_MS, 1],
    "past": [1_000, MINUTE_MS, HOUR_MS, 3 * DAY_MS],
    "soon": [200, 1_500],
    "hour": [0, 0, 1, 10 * MINUTE_MS, HOUR_MS - 1],
    "usage": [-1, 0, 0, 1, -HOUR_MS],
    "usage-hour": [0, HOUR_MS],
    "again": [0],
}


@st.composite
def end_steps(draw: st.DrawFn, batches: int) -> tuple[EndStep, ...]:
    """Half the examples end their contract, up to 4 times (an end moved, retried, refused)."""
    if draw(st.booleans()):
        return ()
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["start", "past", "soon", "hour", "hour", "usage", "usage", "usage-hour", "again"]))
        steps.append(
            EndStep(
                draw(st.integers(0, batches)),
                kind,
                draw(st.integers(0, 2)),
                draw(st.sampled_from(END_OFFSETS[kind])),
                draw(st.integers(0, 2)) == 0,
            )
        )
    return tuple(sorted(steps, key=lambda step: step.before_batch))


def end_at(step: EndStep, oracle: ReferenceRating, now: int, soon: list[int]) -> int:
    """The end `step` names when requested at `now` (see EndStep)."""
    kind = step.kind
    if (kind.startswith("usage") and not soon) or (kind == "again" and oracle.contract_end_ms is None):
        kind = "hour"
    match kind:
        case "start":
            return oracle.contract_start_ms + step.offset_ms
        case "past":
            return now - step.offset_ms
        case "soon":
            return now + step.offset_ms
        case "usage":
            return soon[step.hours % len(soon)] + step.offset_ms
        case "usage-hour":
            return soon[step.hours % len(soon)] // HOUR_MS * HOUR_MS + step.offset_ms
        case "again":
            assert oracle.contract_end_ms is not None
            return oracle.contract_end_ms
    offset = step.offset_ms if step.kind == "hour" else 0
    return (now // HOUR_MS + step.hours) * HOUR_MS + offset


EndOutcome = tuple[str, int | None]  # as ReferenceRating.end_contract answers


def iso_ms(text: str) -> int:
    """An instant as the engine writes one in a message (ISO 8601, UTC, "Z")."""
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def engine_end(world: World, contract_id: str, end_ms: int, at_ms: int) -> EndOutcome:
    """EndContract applied to the control plane at `at_ms`, its answer in the oracle's terms (a refusal's kind read
    from its message, as a client reads it from the status's)."""
    try:
        world.apply(cmd.EndContract(at_ms, ACTOR, contract_id, end_ms))
    except Repeated:
        return "repeated", None
    except InvalidArgument as exc:
        assert "ending_before" in str(exc), exc
        return "after starting_at", None
    except FailedPrecondition as exc:
        return refusal(str(exc))
    return "ended", None


def refusal(details: str) -> EndOutcome:
    """The oracle's kind of an EndContract refused FAILED_PRECONDITION, read from its message (and the hour of usage
    it names)."""
    hour = re.search(r"in the hour from (\S+), at or after that end", details)
    if hour:
        return "usage", iso_ms(hour.group(1))
    for kind, says in (("already ended", "has already ended"), ("before now", "before now")):
        if says in details:
            return kind, None
    if "has a rollover fraction" in details:
        return "rolling grant", None
    raise AssertionError(f"EndContract refused for no documented reason: {details}")
