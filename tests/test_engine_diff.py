"""DiffVersions in the engine (engine/diff.py): parameters and rates added, removed, changed and repriced, for
every price model, with each differing field's formula and evaluated price, in a stable order."""

from __future__ import annotations

import pytest

from engine.diff import (
    RATES_PER_STEP,
    ChangeKind,
    FieldSide,
    ParameterChange,
    PriceFieldChange,
    diff_versions,
    diff_versions_steps,
)
from engine.errors import NotFound
from engine.ratecard import PriceSpec, Rate, TierMode, Version
from tests.engine_fixtures import World, flat, package, rate, tiered, unit


def two_versions(
    old: list[Rate],
    new: list[Rate],
    old_parameters: dict[str, str] | None = None,
    new_parameters: dict[str, str] | None = None,
) -> tuple[World, Version, Version]:
    world = World()
    world.product("tokens")
    world.product("calls")
    world.rate_card()
    first = world.draft(old, parameters=old_parameters)
    second = world.draft(new, parameters=new_parameters)
    return world, first, second


def test_a_version_diffed_with_itself_is_empty() -> None:
    _, first, _ = two_versions([rate("tokens", unit("cost * 2"), model="gpt-4")], [], {"cost": "0.03"})
    diff = diff_versions(first, first)
    assert diff.empty
    assert diff.parameters == () and diff.rates == ()


def test_parameters_added_removed_and_changed_by_name() -> None:
    _, first, second = two_versions([], [], {"b": "1", "a": "2", "z": "3"}, {"b": "1.5", "c": "4", "a": "2"})
    assert diff_versions(first, second).parameters == (
        ParameterChange("b", ChangeKind.CHANGED, "1", "1.5"),
        ParameterChange("c", ChangeKind.ADDED, None, "4"),
        ParameterChange("z", ChangeKind.REMOVED, "3", None),
    )


def test_one_parameter_changed_reprices_the_rates_whose_formulas_use_it() -> None:
    # The litmus story: gpt4_cost_per_1k cut 20%; the rates are written the same, their prices move.
    rates = [
        rate("tokens", unit("gpt4_cost_per_1k * markup", "1000"), model="gpt-4"),
        rate("tokens", unit("claude_cost_per_1k * markup", "1000"), model="claude"),
    ]
    parameters = {"gpt4_cost_per_1k": "0.03", "claude_cost_per_1k": "0.01", "markup": "1.5"}
    _, first, second = two_versions(rates, rates, parameters, {**parameters, "gpt4_cost_per_1k": "0.024"})
    diff = diff_versions(first, second)
    assert diff.parameters == (ParameterChange("gpt4_cost_per_1k", ChangeKind.CHANGED, "0.03", "0.024"),)
    assert len(diff.rates) == 1  # claude's price did not move
    change = diff.rates[0]
    assert change.key == ("tokens", (("model", "gpt-4"),))
    assert change.kind is ChangeKind.REPRICED
    assert change.old_rate == change.new_rate == rates[0]
    assert change.fields == (
        PriceFieldChange(
            "unit.price",
            FieldSide("gpt4_cost_per_1k * markup", "0.045"),
            FieldSide("gpt4_cost_per_1k * markup", "0.036"),
        ),
    )


def test_a_changed_formula_shows_old_and_new_formula_and_price() -> None:
    parameters = {"cost": "0.02", "markup": "2"}
    _, first, second = two_versions(
        [rate("tokens", unit("cost * markup"))], [rate("tokens", unit("cost * markup + 0.01"))], parameters, parameters
    )
    (change,) = diff_versions(first, second).rates
    assert change.kind is ChangeKind.CHANGED
    assert change.fields == (
        PriceFieldChange("unit.price", FieldSide("cost * markup", "0.04"), FieldSide("cost * markup + 0.01", "0.05")),
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            unit("0.5", "1000"),
            unit("0.5", "100"),
            [("unit.per_units", "1000", "1000", "100", "100")],
            id="unit-per-units",
        ),
        pytest.param(
            unit("0.5"),
            unit("0.5", "1"),
            [("unit.per_units", "", "1", "1", "1")],
            id="unit-default-written-out",
        ),
        pytest.param(
            tiered(TierMode.GRADUATED, ("100", "0.1"), ("", "0.05")),
            tiered(TierMode.GRADUATED, ("100", "0.1"), ("1000", "0.05"), ("", "0.01", "5")),
            [
                ("tiered.tiers[1].up_to", "", None, "1000", "1000"),
                ("tiered.tiers[2].up_to", None, None, "", None),
                ("tiered.tiers[2].unit_price", None, None, "0.01", "0.01"),
                ("tiered.tiers[2].flat_price", None, None, "5", "5"),
            ],
            id="tiered-tier-added",
        ),
        pytest.param(
            package("1000", "price_per_pack"),
            package("500", "price_per_pack / 2"),
            [
                ("package.package_size", "1000", "1000", "500", "500"),
                ("package.package_price", "price_per_pack", "8", "price_per_pack / 2", "4"),
            ],
            id="package",
        ),
        pytest.param(flat("10"), flat("12.50"), [("flat.price", "10", "10", "12.50", "12.5")], id="flat"),
        pytest.param(
            flat("10"),
            unit("0.1"),
            [
                ("unit.price", None, None, "0.1", "0.1"),
                ("unit.per_units", None, None, "", "1"),
                ("flat.price", "10", "10", None, None),
            ],
            id="model-changed",
        ),
    ],
)
def test_every_price_model_lists_the_fields_that_differ(
    old: PriceSpec, new: PriceSpec, expected: list[tuple[str, str | None, str | None, str | None, str | None]]
) -> None:
    parameters = {"price_per_pack": "8"}
    _, first, second = two_versions([rate("calls", old)], [rate("calls", new)], parameters, parameters)
    (change,) = diff_versions(first, second).rates
    assert change.kind is ChangeKind.CHANGED
    shown = [
        (
            f.path,
            f.old.formula if f.old else None,
            f.old.price if f.old else None,
            f.new.formula if f.new else None,
            f.new.price if f.new else None,
        )
        for f in change.fields
    ]
    assert shown == expected


def test_a_tier_mode_change_is_a_change_with_no_price_field() -> None:
    tiers = (("100", "0.1"), ("", "0.05"))
    _, first, second = two_versions(
        [rate("calls", tiered(TierMode.GRADUATED, *tiers))], [rate("calls", tiered(TierMode.VOLUME, *tiers))]
    )
    (change,) = diff_versions(first, second).rates
    assert (change.kind, change.fields) == (ChangeKind.CHANGED, ())


def test_rates_added_and_removed_carry_every_field_of_their_one_side() -> None:
    _, first, second = two_versions(
        [rate("calls", flat("3"), region="eu")], [rate("calls", unit("k * 2"), region="us")], {}, {"k": "0.25"}
    )
    removed, added = diff_versions(first, second).rates  # by match: region=eu before region=us
    assert (removed.kind, removed.new_rate, removed.fields) == (
        ChangeKind.REMOVED,
        None,
        (PriceFieldChange("flat.price", FieldSide("3", "3"), None),),
    )
    assert (added.kind, added.old_rate) == (ChangeKind.ADDED, None)
    assert added.fields == (
        PriceFieldChange("unit.price", None, FieldSide("k * 2", "0.5")),
        PriceFieldChange("unit.per_units", None, FieldSide("", "1")),
    )


def test_rates_come_by_product_then_match_whatever_order_the_versions_hold_them_in() -> None:
    new = [
        rate("tokens", unit("2"), model="gpt-4", region="us"),
        rate("tokens", unit("2"), region="eu"),
        rate("calls", unit("2")),
        rate("tokens", unit("2")),
        rate("tokens", unit("2"), model="gpt-4"),
        rate("tokens", unit("2"), model="claude"),
    ]
    _, first, second = two_versions([], new)
    keys = [(c.key[0], dict(c.key[1])) for c in diff_versions(first, second).rates]
    assert keys == [
        ("calls", {}),
        ("tokens", {}),
        ("tokens", {"model": "claude"}),
        ("tokens", {"model": "gpt-4"}),
        ("tokens", {"model": "gpt-4", "region": "us"}),
        ("tokens", {"region": "eu"}),
    ]
    # The order does not depend on the order of the rates in the version.
    _, first, reversed_second = two_versions([], list(reversed(new)))
    assert [c.key for c in diff_versions(first, reversed_second).rates] == [
        c.key for c in diff_versions(first, second).rates
    ]


def test_a_formula_a_draft_cannot_evaluate_shows_why() -> None:
    _, first, second = two_versions(
        [rate("calls", unit("a / b"))], [rate("calls", unit("a / b"))], {"a": "1", "b": "4"}, {"a": "1", "b": "0"}
    )
    (change,) = diff_versions(first, second).rates
    assert change.kind is ChangeKind.REPRICED
    (field,) = change.fields
    assert (field.old, field.new.price if field.new else "") == (FieldSide("a / b", "0.25"), None)
    assert field.new is not None and "divides by zero" in field.new.problem


def test_diff_is_from_the_first_to_the_second_in_either_order() -> None:
    _, first, second = two_versions([], [], {"p": "1"}, {"p": "2"})
    assert diff_versions(second, first).parameters == (ParameterChange("p", ChangeKind.CHANGED, "2", "1"),)


def test_an_unknown_version_is_not_found_naming_it() -> None:
    world, _, _ = two_versions([], [])
    with pytest.raises(NotFound, match="rate card 'card' has no version 9"):
        world.engine.rate_card("card").version(9)
    with pytest.raises(NotFound, match="rate card 'nope' does not exist"):
        world.engine.rate_card("nope")


def test_a_diff_in_steps_yields_every_64_rates_and_answers_the_whole_diff() -> None:
    """diff_versions_steps (DiffVersions on the event loop, server/scheduling.py paced): 200 rates in both versions,
    every one repriced (`cost` 0.03 -> 0.04), give 3 pauses (after rates 64, 128, 192) and the very diff
    diff_versions answers: one parameter change, 200 REPRICED rates. A step is 64 rates, whatever their changes."""
    rates = [rate("tokens", unit("cost * 2"), model=f"m{n:03}") for n in range(200)]
    _, first, second = two_versions(rates, rates, {"cost": "0.03"}, {"cost": "0.04"})
    steps = diff_versions_steps(first, second)
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            stepped = done.value
            break
        pauses += 1
    assert pauses == 200 // RATES_PER_STEP == 3
    assert stepped == diff_versions(first, second)
    assert len(stepped.rates) == 200 and {c.kind for c in stepped.rates} == {ChangeKind.REPRICED}
