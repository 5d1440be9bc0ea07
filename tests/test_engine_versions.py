"""Rate card versions in the control plane: validation findings with their paths, publication rules, drafts
based on a version, (docs/architecture.md §3). Pricing by these versions is
tested in the kernel (tests/test_kernel_rating.py)."""

from __future__ import annotations

import pytest

from engine import commands as cmd
from engine import versions
from engine.errors import FailedPrecondition, InvalidArgument, LimitReached
from engine.ratecard import Rate, Severity, TierMode, Version, VersionState, validate
from tests.engine_fixtures import (
    EPOCH_MS,
    HOUR_MS,
    MINUTE_MS,
    World,
    basic_world,
    package,
    rate,
    tiered,
    unit,
)

T = EPOCH_MS


# Validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rates", "parameters", "expected"),
    [
        pytest.param(
            [rate("tokens", unit("1"), model="gpt4"), rate("tokens", unit("2"), region="eu")],
            {},
            [(Severity.ERROR, "rates[1].match")],
            id="ambiguous-pair",
        ),
        pytest.param(
            [rate("tokens", unit("1"), model="gpt4"), rate("tokens", unit("2"), model="claude")],
            {},
            [],
            id="equally-specific-but-disjoint",
        ),
        pytest.param(
            [
                rate("tokens", unit("1"), model="gpt4"),
                rate("tokens", unit("2"), region="eu"),
                rate("tokens", unit("3"), model="gpt4", region="eu"),
            ],
            {},
            [],
            id="pair-decided-by-more-specific-rate",
        ),
        pytest.param(
            [rate("tokens", unit("cost * markup"))],
            {"cost": "1"},
            [(Severity.ERROR, "rates[0].unit.price")],
            id="unknown-parameter",
        ),
        pytest.param([rate("nope", unit("1"))], {}, [(Severity.ERROR, "rates[0].product_id")], id="unknown-product"),
        pytest.param(
            [rate("tokens", unit("1"), color="red")], {}, [(Severity.ERROR, "rates[0].match.color")], id="unpriced-key"
        ),
        pytest.param(
            [rate("tokens", unit("1", "0"))], {}, [(Severity.ERROR, "rates[0].unit.per_units")], id="per-units-zero"
        ),
        pytest.param([rate("tokens", unit("-1"))], {}, [(Severity.ERROR, "rates[0].unit.price")], id="negative-price"),
        pytest.param(
            [rate("tokens", unit("a / b"))],
            {"a": "1", "b": "0"},
            [(Severity.ERROR, "rates[0].unit.price")],
            id="formula-divides-by-zero",
        ),
        pytest.param(
            [rate("tokens", unit("2 ** 3"))], {}, [(Severity.ERROR, "rates[0].unit.price")], id="formula-power"
        ),
        pytest.param(
            [rate("tokens", tiered(TierMode.GRADUATED, ("100", "1"), ("50", "1"), ("", "1")))],
            {},
            [(Severity.ERROR, "rates[0].tiered.tiers[1].up_to")],
            id="tiers-not-ascending",
        ),
        pytest.param(
            [rate("tokens", tiered(TierMode.VOLUME, ("100", "1")))],
            {},
            [(Severity.ERROR, "rates[0].tiered.tiers")],
            id="last-tier-bounded",
        ),
        pytest.param(
            [rate("tokens", package("0", "1"))], {}, [(Severity.ERROR, "rates[0].package.package_size")], id="pkg-0"
        ),
        pytest.param([], {}, [(Severity.WARNING, "rates")], id="no-rates-warns"),
    ],
)
def test_validate_reports_findings_with_paths(
    rates: list[Rate], parameters: dict[str, str], expected: list[tuple[Severity, str]]
) -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    draft = world.draft(rates, parameters=parameters)
    findings = validate(draft, world.engine.state.products)
    assert [(f.severity, f.path) for f in findings] == expected


def test_publish_refuses_an_ambiguous_version_with_its_findings() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    draft = world.draft([rate("tokens", unit("1"), model="gpt4"), rate("tokens", unit("2"), region="eu")])
    seq = world.seq
    with pytest.raises(InvalidArgument) as refused:
        world.publish(draft.number)
    assert [field for field, _ in refused.value.violations] == ["version.rates[1].match"]
    assert world.seq == seq
    assert world.engine.state.rate_cards["card"].version(1).state is VersionState.DRAFT


def test_unknown_parameter_finding_names_the_parameter() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    draft = world.draft([rate("tokens", unit("cost * markup"))], parameters={"cost": "1"})
    [finding] = validate(draft, world.engine.state.products)
    assert "unknown parameter 'markup'" in finding.message


# Versions -------------------------------------------------------------------------------------------------------


def test_draft_based_on_a_version_changes_only_what_it_sets() -> None:
    world = basic_world([rate("tokens", unit("cost", "1000"))], parameters={"cost": "0.03"})
    world.draft(based_on=1, parameters={"cost": "0.02"})
    version2 = world.engine.state.rate_cards["card"].version(2)
    assert version2.parameters == {"cost": "0.02"}
    assert version2.rates == world.engine.state.rate_cards["card"].version(1).rates


def test_publish_off_the_hour_is_invalid_argument() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    world.draft([rate("tokens", unit("1"))])
    seq = world.seq
    with pytest.raises(InvalidArgument) as refused:
        world.publish(1, effective_from_ms=T + 30 * MINUTE_MS)
    assert [field for field, _ in refused.value.violations] == ["effective_from"]
    assert world.seq == seq
    assert world.engine.state.rate_cards["card"].version(1).state is VersionState.DRAFT


def test_publishing_twice_is_failed_precondition() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    world.version([rate("tokens", unit("1"))])
    with pytest.raises(FailedPrecondition):
        world.publish(1, effective_from_ms=T + HOUR_MS)
    assert world.engine.state.rate_cards["card"].timeline == [(T, 1)]


def test_publish_without_effective_from_starts_at_the_current_hour() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    world.draft([rate("tokens", unit("1"))])
    result = world.publish(1, effective_from_ms=None, at_ms=T + 90 * MINUTE_MS)
    assert result.version.effective_from_ms == T + HOUR_MS  # 01:30 -> 01:00


# Drafts per rate card ------------------------------------------------------------------------------------------


def test_drafts_past_the_cards_limit_are_refused_only_when_the_server_marked_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the limit at 2 (engine/versions.py DRAFTS_PER_RATE_CARD_MAX, 1,000): two drafts of `card` are held, a
    third marked `drafts_bounded` (as the server marks every request) is LimitReached naming the card, its 2
    drafts and the limit, and nothing is made; one journaled before the mark (False) is made as it was then, so
    an old journal replays alike. Publishing draft 1 leaves 2 drafts (2 and 3): a marked draft is refused still;
    the card's published versions are not counted."""
    monkeypatch.setattr(versions, "DRAFTS_PER_RATE_CARD_MAX", 2)
    world = World()
    world.product("calls")
    world.rate_card()

    def draft(bounded: bool) -> object:
        return world.apply(
            cmd.CreateDraftVersion(T, "analyst", "card", 0, {}, (), (rate("calls", unit("1")),), (), "", "", bounded)
        )

    draft(True), draft(True)
    with pytest.raises(LimitReached) as refused:
        draft(True)
    assert "'card' holds 2 unpublished drafts" in str(refused.value) and "(2)" in str(refused.value)
    assert len(world.engine.state.rate_cards["card"].versions) == 2
    made = draft(False)
    assert isinstance(made, Version) and made.number == 3
    world.publish(1, effective_from_ms=T)
    with pytest.raises(LimitReached):
        draft(True)
    world.publish(2, effective_from_ms=T + HOUR_MS)
    made = draft(True)
    assert isinstance(made, Version) and made.number == 4
