"""A study's grid from five small combinators, the way disentanglement_lib's `utils/hyperparams.py` builds sweeps.

A *sweep* is a list of settings, each a mapping from a key path (a tuple of config keys) to a value:

    sweep(("train", "lr"), [1e-3, 3e-4])           -> [{lr: 1e-3}, {lr: 3e-4}]
    zipit([sweep(a, [1, 2]), sweep(b, [3, 4])])    -> [{a: 1, b: 3}, {a: 2, b: 4}]     (advance together)
    product([sweep(a, [1, 2]), sweep(b, [3, 4])])  -> [{a: 1, b: 3}, {a: 1, b: 4}, {a: 2, b: 3}, {a: 2, b: 4}]
    chainit([s1, s2])                               -> s1 + s2
    fixed(a, 1)                                     -> [{a: 1}]

An arm's settings are the `product` of its axes (every list-valued leaf of its merged config, `find_axes`), the axes
named together in its `zip` groups first `zipit`-ed into one (`arm_units`); `apply` writes a setting into a copy of
the config.
How a cell's config is merged before its axes are found (base ← dataset ← model ← arm) is `merge_cell_sections`.
"""

from __future__ import annotations

import copy
import itertools
import types
import typing
from collections.abc import Sequence as AbcSequence
from typing import Any, Sequence

from ablate.core.config import model_name, walk_fields
from ablate.core.config_reading import set_path

Path_ = tuple[Any, ...]  # a key path in a config mapping: ("train", "lr"), ("datasets", 0)
Setting = dict[Path_, Any]


# ---------------------------------------------------------------- the combinators


def sweep(path: Path_, values: Sequence[Any]) -> list[Setting]:
    """One key over its values."""
    return [{path: value} for value in values]


def fixed(path: Path_, value: Any) -> list[Setting]:
    """One key at one value."""
    return [{path: value}]


def zipit(sweeps: Sequence[list[Setting]]) -> list[Setting]:
    """Sweeps of equal length advanced together: the i-th settings merged."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise ValueError(f"zipped sweeps must have equal lengths (got {sorted(lengths)})")
    return [{k: v for part in parts for k, v in part.items()} for parts in zip(*sweeps)]


def product(sweeps: Sequence[list[Setting]]) -> list[Setting]:
    """Every combination of one setting from each sweep, the last sweep varying fastest (itertools.product)."""
    return [{k: v for part in parts for k, v in part.items()} for parts in itertools.product(*sweeps)]


def chainit(sweeps: Sequence[list[Setting]]) -> list[Setting]:
    """The sweeps one after the other."""
    return [setting for s in sweeps for setting in s]


def apply(config: dict[str, Any], setting: Setting) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a copy of `config` with the setting written in, the setting by dotted key: a cell's `settings`)."""
    data = copy.deepcopy(config)
    named: dict[str, Any] = {}
    for path, value in setting.items():
        set_path(data, path, copy.deepcopy(value))
        named[".".join(map(str, path))] = value
    return data, named


def arm_units(axes: dict[Path_, list[Any]], groups: list[list[Path_]]) -> list[list[Setting]]:
    """An arm's axes as the sweeps its grid is the product of: one per axis in document order, each zip group
    zipped into one at the place of its first axis."""
    zipped = {p for g in groups for p in g}
    units: list[list[Setting]] = []
    for path, values in axes.items():
        group = next((g for g in groups if g[0] == path), None)
        if group is not None:
            units.append(zipit([sweep(p, axes[p]) for p in group]))
        elif path not in zipped:
            units.append(sweep(path, values))
    return units


# ---------------------------------------------------------------- merging and axes


def deep_merge(base: Any, over: Any) -> Any:
    """`over` merged into a copy of `base`: mappings recursively, everything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = deep_merge(out.get(key), value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def merge_cell_sections(base: dict[str, Any], d_data: dict[str, Any], m_data: dict[str, Any] | None,
                        m_sections: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """One cell's raw config: base, then the dataset entry's data section, the model entry (merged into the base
    model when it is the same family, replacing it otherwise) and its train/eval sections, then the arm's
    overrides."""
    merged = copy.deepcopy(base)
    merged.pop("seed", None)
    if d_data:
        merged["data"] = deep_merge(merged.get("data") or {}, d_data)
    if m_data is not None:
        base_model = merged.get("model") if isinstance(merged.get("model"), dict) else {}
        same = model_name(m_data) == model_name(base_model)
        merged["model"] = deep_merge(base_model, m_data) if same else copy.deepcopy(m_data)
    merged = deep_merge(merged, m_sections)
    return deep_merge(merged, overrides)


def _is_list_annotation(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation in (list, tuple, set) or origin in (list, tuple, set, AbcSequence):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list_annotation(a) for a in typing.get_args(annotation))
    return False


def is_list_field(path: Path_, merged: dict[str, Any]) -> bool:
    """Whether the run-config field at a key path is itself list-valued (so a plain list there is not an axis)."""
    annotation, _ = walk_fields(path, model_name(merged.get("model")))
    return annotation is not None and _is_list_annotation(annotation)


def find_axes(data: Any, merged: dict[str, Any], path: Path_ = ()) -> dict[Path_, list[Any]]:
    """Every list-valued leaf (an axis) of a merged config, in document order."""
    axes: dict[Path_, list[Any]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            axes.update(find_axes(value, merged, path + (key,)))
    elif isinstance(data, list):
        if is_list_field(path, merged):
            if data and all(isinstance(v, list) for v in data):
                axes[path] = data
        else:
            axes[path] = data
    return axes
