"""The study grid's combinators (ablate/sweep/grid.py), against hand-worked sweeps."""

from __future__ import annotations

import pytest

from ablate.sweep.grid import apply, arm_units, chainit, fixed, product, sweep, zipit

A, B, C = ("train", "lr"), ("train", "epochs"), ("seed",)


def test_each_combinator_on_a_hand_worked_case():
    assert sweep(A, [1, 2]) == [{A: 1}, {A: 2}]
    assert fixed(A, 3) == [{A: 3}]
    assert zipit([sweep(A, [1, 2]), sweep(B, [3, 4])]) == [{A: 1, B: 3}, {A: 2, B: 4}]
    assert product([sweep(A, [1, 2]), sweep(B, [3, 4])]) == [{A: 1, B: 3}, {A: 1, B: 4}, {A: 2, B: 3}, {A: 2, B: 4}]
    assert chainit([sweep(A, [1]), sweep(B, [2])]) == [{A: 1}, {B: 2}]
    assert product([]) == [{}]  # no axis: one setting, the config itself
    with pytest.raises(ValueError, match="equal lengths"):
        zipit([sweep(A, [1, 2]), sweep(B, [3])])


def test_an_arm_grid_zips_its_groups_in_place_and_crosses_the_rest():
    axes = {A: [1, 2], C: [7, 8, 9], B: [3, 4]}
    settings = product(arm_units(axes, [[A, B]]))
    # the zipped pair stands where its first axis is; the last unit varies fastest
    assert settings == [{A: 1, B: 3, C: 7}, {A: 1, B: 3, C: 8}, {A: 1, B: 3, C: 9},
                        {A: 2, B: 4, C: 7}, {A: 2, B: 4, C: 8}, {A: 2, B: 4, C: 9}]


def test_apply_writes_a_setting_into_a_copy_and_names_it_by_dotted_key():
    config = {"train": {"lr": [1, 2], "epochs": 5}}
    data, named = apply(config, {A: 2})
    assert data == {"train": {"lr": 2, "epochs": 5}} and named == {"train.lr": 2}
    assert config["train"]["lr"] == [1, 2]  # the original is untouched
