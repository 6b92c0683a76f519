"""Study YAML → cells: a resolved run config per cell, named by the hash of that config.

A study file:

    study: full_grid                 # the results folder name (default: the file's stem)
    base: {model: ..., train: ...}   # a run config, as for `ablate run`
    datasets: [synthetic]            # optional: names (→ data.name) or data sections ({name: ptb, path: ...})
    models: [{name: lstm, nz: 32}]   # optional: model sections (merged over base.model when the name matches),
                                     # or {label: t5, model: {...}, train: {...}, eval: {...}} when a model family
                                     # needs its own training settings too
    seeds: [0, 1, 2]                 # optional (default: base.seed)
    arms:                            # chained: each arm is a family of cells (a row family in the report)
      - name: free_bits
        techniques: {free_bits: {mode: per_dim_example, lambda_per_dim: [0.1, 0.25]}}   # a list = an axis
        train: {lr: [1.0e-3, 3.0e-4]}                                                   # any section may be set
        zip: [[techniques.free_bits.lambda_per_dim, train.lr]]   # optional: pair these axes instead of crossing
        exclude: [{train.lr: 3.0e-4, seed: 2}]                   # optional, as the study-level one
    exclude: [{arm: free_bits, dataset: ptb}]                    # optional: drop matching cells

Resolution of one cell: base ← dataset entry (data section) ← model entry (model section, and train/eval sections
in the long form) ← arm sections (deep merge; an arm's
`techniques` are merged too, technique by technique) ← axis values ← seed. Every list-valued leaf of the
merged config is an axis; on a field that is itself a list (e.g. eval.splits) an axis is a list of lists. The
axes of an arm are crossed, except the groups named in `zip`, which advance together. Exclude entries match on
the resolved config's dotted keys (defaults included) and on the labels arm, dataset, model, seed; a list value
in an exclude entry means "any of". An entry naming only labels drops its cells before they are validated, so an
arm written for one model family (e.g. LSTM sizes) can be kept off another (`{model: t5, arm: [prokhorov2019]}`).

A cell's id is `config_hash` of its resolved config (defaults filled, technique versions included), never its
position or its arm name: adding seeds, values or arms adds cells and leaves existing results valid. Two cells
with the same config in one study are an error (the manifest maps each id to one arm).

Errors are one line naming the file, the line (from YAML node marks) and the key.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from ablate.config import (ConfigError, DataConfig, EvalConfig, RunConfig, TrainConfig, apply_overrides, blame_overrides, canonical_dict,
                           config_hash, explain, flatten, model_config_class, model_name, parse_override,
                           read_yaml_file, set_path, shorten, suggest)
from ablate.layout import MAX_NAME
from ablate.safe_yaml import line_map
from ablate.metric_schema import SELECT, is_metric_column
from ablate.protocol import TOPICS, Protocol, Setting, config_value, same_value
from ablate.selection import Condition, parse_where
from ablate.references import Reference, ReferenceConventions
from ablate.sweep.search_space import SearchError, SearchSpec, parse_search

STUDY_KEYS = ["study", "description", "base", "datasets", "models", "seeds", "arms", "exclude", "references",
              "protocol", "baseline", "select", "storage"]
ARM_KEYS = ["name", "description", "techniques", "zip", "exclude", "data", "model", "train", "eval", "search"]
LABEL_KEYS = ["arm", "dataset", "model", "seed"]
MODEL_ENTRY_KEYS = ["label", "model", "train", "eval"]  # the long form of a models entry
MAX_SETTINGS = 10_000  # settings of one arm (its grid); each is validated, and each seed makes it a cell
MAX_CELLS = 20_000  # cells of a whole study (the largest shipped study has 45)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

Path_ = tuple[Any, ...]  # a key path in the YAML document: ("arms", 2, "techniques", "free_bits")


def study_hash(text: str, overrides: Sequence[str] = ()) -> str:
    """The id of a study as swept: sha256 of its file's text, and of the --set overrides when any (study.json)."""
    extra = "".join(f"\n--set {o}" for o in overrides)
    return hashlib.sha256((text + extra).encode()).hexdigest()


@dataclass(frozen=True)
class Cell:
    """One resolved run config of a study with its labels. `settings`: the swept axis values of this cell."""

    cell_id: str
    arm: str
    dataset: str
    model: str
    seed: int
    settings: dict[str, Any]
    config: RunConfig

    def canonical_json(self) -> str:
        return json.dumps(canonical_dict(self.config), sort_keys=True, separators=(",", ":"))


@dataclass
class Study:
    name: str
    path: Path
    text: str
    cells: list[Cell]
    arms: list[str]
    datasets: list[str]
    models: list[str]
    seeds: list[int]
    settings_per_arm: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    excluded: int = 0
    references: list[Reference] = field(default_factory=list)
    protocol: Protocol | None = None  # a reproduction's card (ablate.protocol), required beside references
    select_by: tuple[str, ...] = SELECT  # the validation column(s) ranking settings and trials (ablate.selection)
    select_where: tuple[Condition, ...] = ()  # the constraint they must meet
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE applied to every cell
    storage: str | None = None  # the study's own storage URL (--storage and $ABLATE_STORAGE override it)
    searches: list[SearchSpec] = field(default_factory=list)  # search arms: one per dataset × model × seed

    @property
    def hash(self) -> str:
        """sha256 of the study file's text (and of the --set overrides it was run with, when any)."""
        return study_hash(self.text, self.overrides)

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.cell_id == cell_id:
                return cell
        raise KeyError(cell_id)

    def counts(self) -> dict[str, dict[str, int]]:
        """arm -> dataset -> number of cells."""
        out: dict[str, dict[str, int]] = {arm: {d: 0 for d in self.datasets} for arm in self.arms}
        for cell in self.cells:
            out[cell.arm][cell.dataset] += 1
        return out

    def summary(self) -> str:
        """The cell counts per arm and dataset (what `ablate validate` and `ablate sweep --dry-run` print)."""
        counts = self.counts()
        width = max([len("arm"), len("total")] + [len(a) for a in self.arms]) + 2
        cols = [max(len(d), 5) + 2 for d in self.datasets]
        head = f"{'arm':<{width}}{'settings':>10}" + "".join(f"{d:>{w}}" for d, w in zip(self.datasets, cols))
        lines = [f"{self.path}: study '{self.name}': {len(self.cells)} cells = {len(self.arms)} arm(s) "
                 f"[{sum(self.settings_per_arm.values())} settings] × {len(self.datasets)} dataset(s) × "
                 f"{len(self.models)} model(s) × {len(self.seeds)} seed(s)"
                 + (" (after exclusions)" if self.excluded else "")
                 + (f"; with --set {' --set '.join(self.overrides)}" if self.overrides else ""),
                 head + f"{'total':>8}"]
        for arm in self.arms:
            row = counts[arm]
            lines.append(f"{arm:<{width}}{self.settings_per_arm.get(arm, 1):>10}"
                         + "".join(f"{row[d]:>{w}}" for d, w in zip(self.datasets, cols))
                         + f"{sum(row.values()):>8}")
        totals = [sum(counts[a][d] for a in self.arms) for d in self.datasets]
        lines.append(f"{'total':<{width}}{'':>10}" + "".join(f"{t:>{w}}" for t, w in zip(totals, cols))
                     + f"{len(self.cells):>8}")
        searched: dict[str, list[SearchSpec]] = {}
        for spec in self.searches:
            searched.setdefault(spec.arm, []).append(spec)
        for arm, specs in searched.items():
            s = specs[0]
            lines.append(f"search arm {arm}: {s.sampler} (seed {s.sampler_seed}), {s.trials} trials × {len(specs)} "
                         f"dataset×model×seed = {s.trials * len(specs)} cells asked as the study runs; objective "
                         f"{', '.join(s.objectives)}; space {', '.join(s.space)}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def labelled_configs(self) -> list[tuple[str, RunConfig]]:
        """(where it comes from, config) of every cell (and of each search's lowest point), for checks that name
        the cell's arm (ablate.preflight)."""
        from ablate.config import build_config

        searches = [(f"{self.path}: arm '{s.arm}' ({s.dataset}, {s.model}, search)",
                     build_config(s.raw_at(s.corners()[0]))) for s in self.searches]
        return self._grid_configs() + searches

    def _grid_configs(self) -> list[tuple[str, RunConfig]]:
        return [(f"{self.path}: arm '{c.arm}' ({c.dataset}, {c.model})", c.config) for c in self.cells]

    def manifest_rows(self) -> list[dict[str, Any]]:
        """One row per expected cell (the study folder's manifest.parquet)."""
        return [{"cell_id": c.cell_id, "arm": c.arm, "dataset": c.dataset, "model": c.model, "seed": c.seed,
                 "settings": json.dumps(c.settings, sort_keys=True), "config": c.canonical_json()}
                for c in self.cells]


# ---------------------------------------------------------------- YAML with line numbers


def _load_yaml(path: Path) -> tuple[str, dict[str, Any], dict[Path_, int]]:
    text, data, root = read_yaml_file(path, "study")
    lines: dict[Path_, int] = {}
    if root is not None:
        line_map(root, (), lines)
    return text, data, lines


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ---------------------------------------------------------------- merging and axes


def deep_merge(base: Any, over: Any) -> Any:
    """`over` merged into a copy of `base`: mappings recursively, everything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = deep_merge(out.get(key), value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def _is_list_annotation(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation in (list, tuple, set) or origin in (list, tuple, set, AbcSequence):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list_annotation(a) for a in typing.get_args(annotation))
    return False


SECTION_MODELS: dict[str, type[BaseModel]] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def is_list_field(path: Path_, merged: dict[str, Any]) -> bool:
    """Whether the run-config field at a key path is itself list-valued (so a plain list there is not an axis)."""
    if not path:
        return False
    head, rest = path[0], path[1:]
    model: Any
    if head == "techniques":
        if len(rest) < 2:
            return False
        from ablate.techniques.registry import get

        try:
            model = get(str(rest[0])).Config
        except ValueError:
            return False
        rest = rest[1:]
    elif head == "model":
        model = model_config_class(model_name(merged.get("model")))
    elif head in SECTION_MODELS:
        model = SECTION_MODELS[head]
    else:
        return False
    for i, part in enumerate(rest):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        annotation = fields[part].annotation
        if i == len(rest) - 1:
            return _is_list_annotation(annotation)
        candidates = [annotation, *typing.get_args(annotation)]
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return False
    return False


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


# ---------------------------------------------------------------- the loader


class _Loader:
    """Builds a Study from a parsed file; every error names the file, the line and the key."""

    def __init__(self, path: Path, text: str, data: dict[str, Any], lines: dict[Path_, int],
                 overrides: list[str] | None = None):
        self.path, self.text, self.data, self.lines = path, text, data, lines
        self.overrides = list(overrides or [])
        for text_ in self.overrides:
            parse_override(text_)  # a malformed --set fails before anything else

    def line_of(self, *paths: Path_) -> int | None:
        """The line of the first path found (trying ever shorter prefixes of each in turn)."""
        for path in paths:
            if path in self.lines:
                return self.lines[path]
        for path in paths:
            for n in range(len(path) - 1, 0, -1):
                if path[:n] in self.lines:
                    return self.lines[path[:n]]
        return None

    def error(self, path: Path_, message: str, *fallbacks: Path_) -> ConfigError:
        line = self.line_of(path, *fallbacks)
        where = f" line {line}:" if line else ""
        key = f" {_dotted(path)}:" if path else ""
        return ConfigError(f"{self.path}:{where}{key} {message}")

    # -- pieces ------------------------------------------------------------------------------------------

    def check_keys(self, data: dict[str, Any], allowed: list[str], at: Path_, what: str) -> None:
        for key in data:
            if key not in allowed:
                hint = suggest(str(key), allowed) or f"; allowed: {', '.join(allowed)}"
                raise self.error(at + (key,), f"unknown {what} key '{key}'{hint}")

    def expect(self, value: Any, kind: type | tuple[type, ...], at: Path_, what: str) -> Any:
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise self.error(at, f"{what} (got {type(value).__name__}: {value!r})")
        return value

    def name(self, value: Any, at: Path_, what: str) -> str:
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise self.error(at, f"{what} must be a name of letters, digits, '_', '-', '.' (got {value!r})")
        if len(value) > MAX_NAME:
            raise self.error(at, f"{what} is {len(value)} characters long; at most {MAX_NAME} (it names folders "
                                 "and files)")
        return value

    def datasets(self, base: dict[str, Any]) -> list[tuple[str, dict[str, Any], Path_]]:
        raw = self.data.get("datasets")
        if raw is None:
            data = base.get("data") or {}
            return [(str(data.get("name", "synthetic")) if isinstance(data, dict) else "synthetic", {}, ("base",))]
        self.expect(raw, list, ("datasets",), "datasets must be a list of names or data sections")
        if not raw:
            raise self.error(("datasets",), "datasets is empty; give at least one (e.g. [synthetic])")
        out = []
        for i, entry in enumerate(raw):
            if isinstance(entry, str):
                out.append((entry, {"name": entry}, ("datasets", i)))
            elif isinstance(entry, dict):
                entry = dict(entry)
                label = entry.pop("label", None) or entry.get("name") or (base.get("data") or {}).get("name",
                                                                                                      "synthetic")
                out.append((self.name(str(label), ("datasets", i), "a dataset label"), entry, ("datasets", i)))
            else:
                raise self.error(("datasets", i), f"a dataset is a name or a data section (got {entry!r})")
        labels = [label for label, _, _ in out]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise self.error(("datasets", i), f"dataset '{label}' appears twice; give the entries distinct "
                                                   "'label' keys")
        return out

    def models(self, base: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, dict[str, Any], Path_]]:
        """(label, model section or None for base.model, other sections (train/eval) of the entry, where)."""
        raw = self.data.get("models")
        base_model = base.get("model") if isinstance(base.get("model"), dict) else {}
        if raw is None:
            return [(model_name(base_model), None, {}, ("base",))]
        self.expect(raw, list, ("models",), "models must be a list of model sections")
        if not raw:
            raise self.error(("models",), "models is empty; drop the key to use base.model")
        out = []
        for i, entry in enumerate(raw):
            at: Path_ = ("models", i)
            self.expect(entry, dict, at, "a model entry must be a model section (e.g. {name: lstm})")
            entry = dict(entry)
            sections: dict[str, Any] = {}
            if "model" in entry:  # long form: {label, model: {...}, train: {...}, eval: {...}}
                self.check_keys(entry, MODEL_ENTRY_KEYS, at, "models entry (long form)")
                self.expect(entry["model"], dict, at + ("model",), "model must be a model section (e.g. {name: lstm})")
                for key in ("train", "eval"):
                    if entry.get(key) is not None:
                        self.expect(entry[key], dict, at + (key,), f"{key} must be a mapping")
                label = entry.get("label") or model_name(entry["model"])
                sections = {k: entry[k] for k in ("train", "eval") if entry.get(k) is not None}
                entry = dict(entry["model"])
            else:
                label = entry.pop("label", None) or model_name(entry)
            out.append((self.name(str(label), at + ("label",) if "label" in (raw[i] or {}) else at, "a model label"),
                        entry, sections, at))
        labels = [label for label, _, _, _ in out]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise self.error(("models", i), f"model '{label}' appears twice; give the entries distinct "
                                                 "'label' keys")
        return out

    def seeds(self, base: dict[str, Any]) -> list[int]:
        raw = self.data.get("seeds")
        if raw is None:
            return [int(base.get("seed", 0))]
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = [raw]
        self.expect(raw, list, ("seeds",), "seeds must be a list of integers")
        if not raw:
            raise self.error(("seeds",), "seeds is empty; give at least one (e.g. [0])")
        for i, seed in enumerate(raw):
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise self.error(("seeds", i), f"a seed must be an integer (got {seed!r})")
        if len(set(raw)) != len(raw):
            raise self.error(("seeds",), f"seeds repeat a value: {raw}")
        return list(raw)

    def zip_groups(self, arm: dict[str, Any], at: Path_, axes: dict[Path_, list[Any]]) -> list[list[Path_]]:
        raw = arm.get("zip")
        if raw is None:
            return []
        self.expect(raw, list, at + ("zip",), "zip must be a list of key lists, e.g. [[train.lr, train.epochs]]")
        groups = raw if raw and all(isinstance(g, list) for g in raw) else [raw]
        swept = {".".join(map(str, p)): p for p in axes}
        seen: set[Path_] = set()
        out = []
        for g, group in enumerate(groups):
            where = at + ("zip", g) if groups is raw else at + ("zip",)
            if len(group) < 2:
                raise self.error(where, f"a zip group pairs two or more swept keys (got {group!r})")
            paths = []
            for key in group:
                if not isinstance(key, str) or key not in swept:
                    hint = suggest(str(key), list(swept)) or f"; swept keys of this arm: {', '.join(swept) or 'none'}"
                    raise self.error(where, f"zip: '{key}' is not a swept key (a list-valued leaf) of this arm{hint}")
                if swept[key] in seen:
                    raise self.error(where, f"zip: '{key}' is in two zip groups")
                seen.add(swept[key])
                paths.append(swept[key])
            lengths = {".".join(map(str, p)): len(axes[p]) for p in paths}
            if len(set(lengths.values())) > 1:
                raise self.error(where, f"zip: zipped axes must have equal lengths (got {lengths})")
            out.append(paths)
        return out

    def expand_arm(self, arm: dict[str, Any], merged: dict[str, Any], at: Path_, sources: "_Sources"
                   ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(resolved raw config, settings) for every setting of one arm's axes."""
        axes = find_axes(merged, merged)
        for path, values in axes.items():
            if not values:
                raise self.error(at + path, "an empty list: a swept key needs at least one value",
                                 *sources.paths(path))
        groups = self.zip_groups(arm, at, axes)
        zipped = {p for g in groups for p in g}
        units: list[list[dict[Path_, Any]]] = []
        for path, values in axes.items():
            group = next((g for g in groups if g[0] == path), None)
            if group is not None:
                units.append([{p: axes[p][i] for p in group} for i in range(len(values))])
            elif path not in zipped:
                units.append([{path: v} for v in values])
        settings_count = math.prod(len(u) for u in units)
        if settings_count > MAX_SETTINGS:
            raise self.error(at, f"the arm's swept keys multiply to {settings_count:,} settings (limit "
                             f"{MAX_SETTINGS:,}); sweep fewer values, pair keys with zip, or split the study")
        out = []
        for combo in itertools.product(*units) if units else [()]:
            data = copy.deepcopy(merged)
            settings: dict[str, Any] = {}
            for part in combo:
                for path, value in part.items():
                    set_path(data, path, copy.deepcopy(value))
                    settings[".".join(map(str, path))] = value
            out.append((data, settings))
        return out

    def validate(self, data: dict[str, Any], where: str, sources: "_Sources") -> RunConfig:
        try:
            return RunConfig.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            loc = tuple(first["loc"])
            if not loc:
                match = re.search(r"techniques\.([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_]+))?", first["msg"])
                loc = tuple(p for p in match.groups() if p) if match else ()
                loc = ("techniques", *loc) if match else ()
            line = self.line_of(*sources.paths(loc))
            prefix = f"{self.path}:{f' line {line}:' if line else ''} {where}"
            raise explain(error, data, prefix) from None

    def exclusions(self, raw: Any, at: Path_) -> list[tuple[dict[str, Any], Path_]]:
        if raw is None:
            return []
        self.expect(raw, list, at, "exclude must be a list of mappings, e.g. [{arm: vanilla, seed: 2}]")
        out = []
        for i, entry in enumerate(raw):
            self.expect(entry, dict, at + (i,), "an exclude entry must be a mapping of keys to values")
            if not entry:
                raise self.error(at + (i,), "an empty exclude entry would drop every cell")
            out.append((entry, at + (i,)))
        return out

    # -- the whole study ---------------------------------------------------------------------------------

    def selection(self) -> tuple[tuple[str, ...], tuple[Condition, ...]]:
        """`select: valid.nll` or `select: {by: valid.nll, where: "valid.au >= 8"}` (ablate.selection)."""
        raw = self.data.get("select")
        if raw is None:
            return SELECT, ()
        at: Path_ = ("select",)
        if isinstance(raw, str):
            raw = {"by": raw}
        self.expect(raw, dict, at, "select must be a validation column or {by: valid.nll, where: \"valid.au >= 8\"}")
        self.check_keys(raw, ["by", "where"], at, "select")
        by = raw.get("by", list(SELECT))
        by = [by] if isinstance(by, str) else by
        if not isinstance(by, list) or not by or not all(isinstance(b, str) for b in by):
            raise self.error(at + ("by",), "by must be a validation column (valid.nll) or a list of them")
        for column in by:
            if not column.startswith("valid.") or not is_metric_column(column):
                raise self.error(at + ("by",), f"{column!r} is not a validation metric column; choose settings on "
                                 "validation, e.g. valid.nll (a test column would select on the test set)")
        where: tuple[Condition, ...] = ()
        if "where" in raw:
            try:
                where = parse_where(raw["where"], lambda c: c.startswith("valid.") and is_metric_column(c))
            except ValueError as error:
                raise self.error(at + ("where",), str(error)) from None
        return tuple(by), where

    def top_level(self) -> tuple[str, dict[str, Any], list[Any]]:
        """The study's name, base config and arms, with their shapes checked."""
        data = self.data
        self.check_keys(data, STUDY_KEYS, (), "study")
        self.select_by, self.select_where = self.selection()
        name = self.name(data.get("study", self.path.stem), ("study",), "study")
        base = data.get("base") or {}
        self.expect(base, dict, ("base",), "base must be a run config mapping (data, model, train, eval, ...)")
        arms = data.get("arms")
        if arms is None:
            raise self.error((), "a study needs 'arms' (a list of {name, techniques, ...})")
        self.expect(arms, list, ("arms",), "arms must be a list of {name, techniques, ...}")
        if not arms:
            raise self.error(("arms",), "arms is empty; give at least one arm (e.g. {name: vanilla, techniques: {}})")
        return name, base, arms

    def arm_header(self, arm: Any, at: Path_, taken: list[str]) -> tuple[str, dict[str, Any]]:
        """An arm's name (unique) and the config sections it overrides."""
        self.expect(arm, dict, at, "an arm must be a mapping {name, techniques, ...}")
        self.check_keys(arm, ARM_KEYS, at, "arm")
        if "name" not in arm:
            raise self.error(at, "an arm needs a 'name'")
        arm_name = self.name(arm["name"], at + ("name",), "an arm name")
        if arm_name in taken:
            raise self.error(at + ("name",), f"arm name '{arm_name}' is used twice")
        for section in ("techniques", "data", "model", "train", "eval"):
            if section in arm and arm[section] is not None:
                self.expect(arm[section], dict, at + (section,), f"{section} must be a mapping")
        overrides = {k: v for k, v in arm.items() if k in ("techniques", "data", "model", "train", "eval")
                     and v is not None}
        return arm_name, overrides

    def apply_exclusions(self, candidates: list[tuple[Cell, list[tuple[dict[str, Any], Path_]]]],
                         all_excludes: list[tuple[dict[str, Any], Path_]], known_labels: dict[str, list[str]],
                         used: set[Path_]) -> tuple[list[Cell], list[str]]:
        """Check every exclude entry's keys and labels, drop the cells they match; (kept cells, warnings for
        entries that matched nothing)."""
        all_keys = set(LABEL_KEYS)
        flat: dict[int, dict[str, Any]] = {}
        for cell, _ in candidates:
            flat[id(cell)] = {**flatten(canonical_dict(cell.config)), "arm": cell.arm, "dataset": cell.dataset,
                              "model": cell.model, "seed": cell.seed}
            all_keys.update(flat[id(cell)])
        for entry, at in all_excludes:
            for key, want in entry.items():
                if key in known_labels:
                    for value in want if isinstance(want, list) else [want]:
                        if value not in known_labels[key]:
                            hint = suggest(str(value), known_labels[key]) or \
                                f"; the study's {key}s: {', '.join(map(str, known_labels[key]))}"
                            raise self.error(at + (key,), f"exclude: no {key} named {shorten(value)}{hint}")
            for key in entry:
                if key not in all_keys and not any(k.startswith(f"{key}.") for k in all_keys):
                    hint = suggest(str(key), sorted(all_keys)) or "; use a dotted config key or arm/dataset/model/seed"
                    raise self.error(at + (key,), f"exclude: unknown key '{key}'{hint}")
        cells = []
        for cell, excludes in candidates:
            dropped = False
            for entry, at in excludes:
                if self._matches(entry, flat[id(cell)], cell):
                    used.add(at)
                    dropped = True
            if not dropped:
                cells.append(cell)
        warnings = [f"{self.path}: line {self.line_of(at)}: exclude entry {entry} matches no cell"
                    for entry, at in all_excludes if at not in used]
        return cells, warnings

    def check_unique(self, cells: list[Cell], arm_names: list[str]) -> None:
        """Two cells with one resolved config would be one cell run twice: an error naming both."""
        def label(c: Cell) -> str:
            return f"arm '{c.arm}'" + (f" {c.settings}" if c.settings else "")

        seen: dict[str, Cell] = {}
        for cell in cells:
            if cell.cell_id in seen:
                other = seen[cell.cell_id]
                raise self.error(("arms", arm_names.index(cell.arm)),
                                 f"{label(cell)} (seed {cell.seed}, {cell.dataset}) has the same resolved config as "
                                 f"{label(other)}: cell {cell.cell_id}; make them differ or drop one")
            seen[cell.cell_id] = cell

    def load(self) -> Study:
        """Parse → expand every arm × dataset × model × setting × seed → validate each → apply exclusions."""
        name, base, arms = self.top_level()
        datasets, models, seeds = self.datasets(base), self.models(base), self.seeds(base)
        study_excludes = self.exclusions(self.data.get("exclude"), ("exclude",))
        all_excludes = study_excludes + [e for a, arm in enumerate(arms)
                                         for e in self.exclusions(arm.get("exclude"), ("arms", a, "exclude"))]
        arm_names: list[str] = []
        used: set[Path_] = set()  # exclude entries that matched something
        pre_excluded = 0
        candidates: list[tuple[Cell, list[tuple[dict[str, Any], Path_]]]] = []
        settings_per_arm: dict[str, int] = {}
        searches: list[SearchSpec] = []
        for a, arm in enumerate(arms):
            at: Path_ = ("arms", a)
            arm_name, overrides = self.arm_header(arm, at, arm_names)
            arm_names.append(arm_name)
            search = None
            if arm.get("search") is not None:
                raw_search = arm["search"]
                if isinstance(raw_search, dict) and "objective" not in raw_search and "select" in self.data:
                    raw_search = {**raw_search, "objective": self.select_by[0]}  # the study's rule of "best"
                try:
                    search = parse_search(raw_search)
                except SearchError as error:
                    raise self.error(at + ("search",) + error.path, str(error)) from None
            excludes = study_excludes + self.exclusions(arm.get("exclude"), at + ("exclude",))
            settings_seen = 0
            for d_label, d_data, d_at in datasets:
                for m_label, m_data, m_sections, m_at in models:
                    merged = apply_overrides(merge_cell_sections(base, d_data, m_data, m_sections, overrides),
                                             self.overrides)
                    long_form = m_data is not None and "model" in self.data["models"][m_at[1]]
                    sources = _Sources(at, (m_at + ("model",) if long_form else m_at) if m_data is not None else None,
                                       d_at if d_data else None, m_at if long_form else None)
                    settings = self.expand_arm(arm, merged, at, sources)
                    settings_seen = max(settings_seen, len(settings))
                    labels = {"arm": arm_name, "dataset": d_label, "model": m_label}
                    label_excluded = [e_at for entry, e_at in excludes if self._matches_labels(entry, labels)]
                    if label_excluded:  # dropped before validation: the arm may not fit this model at all
                        used.update(label_excluded)
                        pre_excluded += len(settings) * len(seeds)
                        continue
                    if search is not None:  # no grid: a search arm's cells are asked for as the study runs
                        if len(settings) > 1:
                            raise self.error(at, f"arm '{arm_name}' searches its space; it cannot also sweep a list "
                                             "of values (move the key into search.space)")
                        for seed in seeds:
                            searches.append(self.search_spec(arm_name, d_label, m_label, seed, settings[0][0],
                                                             search, sources))
                        continue
                    if len(candidates) + len(settings) * len(seeds) > MAX_CELLS:
                        raise self.error(at, f"the study expands to more than {MAX_CELLS:,} cells (arms × settings "
                                         "× seeds × datasets × models); split it or sweep fewer values")
                    for raw, setting in settings:
                        for seed in seeds:
                            config = self.validate({**raw, "seed": seed}, f"arm '{arm_name}'", sources)
                            cell = Cell(cell_id=config_hash(config), arm=arm_name, dataset=d_label, model=m_label,
                                        seed=seed, settings=setting, config=config)
                            candidates.append((cell, excludes))
            settings_per_arm[arm_name] = settings_seen

        known_labels = {"arm": arm_names, "dataset": [d for d, _, _ in datasets], "model": [m for m, _, _, _ in models]}
        cells, warnings = self.apply_exclusions(candidates, all_excludes, known_labels, used)
        self.check_unique(cells, arm_names)
        if not cells and not searches:
            raise self.error(("exclude",) if study_excludes else ("arms",), "no cells left after exclusions")
        references = self.references(arm_names, [d for d, _, _ in datasets], [m for m, _, _, _ in models])
        protocol = self.protocol(cells, arm_names, bool(references))
        baseline = self.data.get("baseline")
        if baseline is not None and baseline not in arm_names:
            hint = suggest(str(baseline), arm_names) or f"; the study's: {', '.join(arm_names)}"
            raise self.error(("baseline",), f"no arm '{baseline}' in this study{hint} (baseline: the arm the report "
                             "takes paired differences against)")
        storage = self.data.get("storage")
        if storage is not None:
            self.expect(storage, str, ("storage",), "storage must be a storage URL, e.g. "
                        "postgresql+psycopg://user@db/ablate (a password belongs in $ABLATE_STORAGE, not the file)")
            if re.search(r"://[^:/@\s]*:[^@\s]*@", storage):
                raise self.error(("storage",), "the storage URL holds a password, and this file is copied into "
                                 "the results and the report; give the password in $ABLATE_STORAGE (or ~/.pgpass)")
        return Study(name=name, path=self.path, text=self.text, overrides=list(self.overrides), cells=cells,
                     storage=storage, searches=searches,
                     arms=arm_names,
                     datasets=[d for d, _, _ in datasets], models=[m for m, _, _, _ in models], seeds=seeds,
                     settings_per_arm=settings_per_arm, warnings=warnings,
                     excluded=len(candidates) - len(cells) + pre_excluded, references=references,
                     protocol=protocol, select_by=self.select_by, select_where=self.select_where)

    def validated(self, model: type[BaseModel], raw: Any, at: Path_, what: str, nested: dict[str, type[BaseModel]]
                  ) -> Any:
        """`model` validated from `raw`, or the first problem as a one-line error at its key (an unknown key with
        "did you mean"; `nested` names the model of each sub-mapping, for its allowed keys)."""
        try:
            return model.model_validate(raw)
        except ValidationError as error:
            first = error.errors()[0]
            loc = tuple(first["loc"])
            if first["type"] == "extra_forbidden":
                allowed = list(nested.get(str(loc[0]), model).model_fields if len(loc) > 1 else model.model_fields)
                hint = suggest(str(loc[-1]), allowed) or f"; allowed: {', '.join(allowed)}"
                raise self.error(at + loc, f"unknown {what} key '{loc[-1]}'{hint}", at) from None
            raise self.error(at + loc, f"{first['msg']} (got {first.get('input')!r})", at) from None

    def protocol(self, cells: list[Cell], arms: list[str], has_references: bool) -> Protocol | None:
        """The study's protocol card (ablate.protocol): required beside published numbers; every topic covered;
        each `expect` holds in every cell of the arms it covers, unless the entry says why not (`reduced:`)."""
        raw = self.data.get("protocol")
        if raw is None:
            if has_references:
                raise self.error(("references",), "a study with published numbers needs its protocol card: add "
                                 "protocol: {paper, code, settings: [{topic, paper, source, expect}, ...]}, every "
                                 "setting the paper or its code fixes with its source (see ablate/protocol.py and "
                                 "studies/reproduce/li2019_ptb.yaml)")
            return None
        at: Path_ = ("protocol",)
        self.expect(raw, dict, at, "protocol must be a mapping {paper, code, settings}")
        card = self.validated(Protocol, raw, at, "protocol", {"settings": Setting})
        dumped = {id(c): c.config.model_dump(mode="json") for c in cells}
        for i, setting in enumerate(card.settings):
            where: Path_ = ("protocol", "settings", i)
            if setting.topic not in TOPICS:
                hint = suggest(setting.topic, list(TOPICS)) or f"; the topics: {', '.join(TOPICS)}"
                raise self.error(where + ("topic",), f"no protocol topic '{setting.topic}'{hint}", where)
            for arm in setting.arms or []:
                if arm not in arms:
                    hint = suggest(arm, arms) or f"; the study's: {', '.join(arms)}"
                    raise self.error(where + ("arms",), f"no arm '{arm}' in this study{hint}", where)
            covered = [c for c in cells if setting.arms is None or c.arm in setting.arms]
            for key, paper in setting.expect.items():
                for cell in covered:
                    found, ours = config_value(dumped[id(cell)], key)
                    if not found:
                        raise self.error(where + ("expect", key), f"no config key '{key}' in arm '{cell.arm}' "
                                         "(a dotted key of the resolved config, see ablate run --print-config)",
                                         where)
                    if not same_value(ours, paper) and setting.reduced is None:
                        raise self.error(where + ("expect", key), f"arm '{cell.arm}' has {key} = {ours!r}, the "
                                         f"paper {paper!r} ({setting.source}); set it, or say why this study "
                                         "differs with reduced: <reason>", where)
        missing = [t for t in TOPICS if t not in {s.topic for s in card.settings}]
        if missing:
            raise self.error(at + ("settings",), f"the card says nothing about {', '.join(missing)}; add an entry "
                             "for each (topic, paper, source; a setting the paper leaves open says so, with where "
                             "that was checked)", at)
        return card

    def search_spec(self, arm: str, dataset: str, model: str, seed: int, raw: dict[str, Any],
                    search: dict[str, Any], sources: "_Sources") -> SearchSpec:
        """A search of one arm on one dataset × model × seed, its space's corners validated as run configs (so a
        misspelt key or an out-of-range bound is an error now, not in the middle of the study)."""
        spec = SearchSpec(arm=arm, dataset=dataset, model=model, seed=seed, base={**raw, "seed": seed},
                          where=[[c.column, c.op, c.value] for c in self.select_where], **search)
        for corner in spec.corners():
            point = ", ".join(f"{k}={v}" for k, v in corner.items())
            self.validate(spec.raw_at(corner), f"arm '{arm}' (search space {point})", sources)
        return spec

    def references(self, arms: list[str], datasets: list[str], models: list[str]) -> list[Reference]:
        """The study's published numbers (ablate.references), each naming an arm (and dataset/model) it has."""
        raw = self.data.get("references")
        if raw is None:
            return []
        self.expect(raw, list, ("references",), "references must be a list of {arm, source, values, ...}")
        out = []
        for i, entry in enumerate(raw):
            at: Path_ = ("references", i)
            self.expect(entry, dict, at, "a reference must be a mapping {arm, source, values, conventions}")
            ref = self.validated(Reference, entry, at, "reference", {"conventions": ReferenceConventions})
            for key, known, what in (("arm", arms, "arm"), ("dataset", datasets, "dataset label"),
                                     ("model", models, "model label")):
                value = getattr(ref, key)
                if value is not None and value not in known:
                    hint = suggest(value, known) or f"; the study's: {', '.join(known)}"
                    raise self.error(at + (key,), f"no {what} '{value}' in this study{hint}")
            out.append(ref)
        return out

    @staticmethod
    def _matches_labels(entry: dict[str, Any], labels: dict[str, Any]) -> bool:
        """Whether an exclude entry names only the labels arm / dataset / model (no seed, no config key) and
        matches these; such an entry is applied before the cell's config is validated."""
        if not entry or not set(entry) <= set(labels):
            return False
        return all(labels[k] in want if isinstance(want, list) else labels[k] == want for k, want in entry.items())

    @staticmethod
    def _matches(entry: dict[str, Any], flat: dict[str, Any], cell: Cell) -> bool:
        for key, want in entry.items():
            if key in flat:
                have = flat[key]
            else:  # a section or technique named as a whole (e.g. techniques.free_bits): compare the mapping
                have = _get_path(canonical_dict(cell.config), tuple(key.split(".")))
            if isinstance(want, list) and not (isinstance(have, str) and have.startswith("[")):
                if not any(_equal(have, w) for w in want):
                    return False
            elif not _equal(have, want):
                return False
        return True


@dataclass(frozen=True)
class _Sources:
    """Where the keys of one cell's merged config were written: the arm, a models entry, a datasets entry, base."""

    arm: Path_
    model: Path_ | None
    dataset: Path_ | None
    model_entry: Path_ | None = None  # a long-form models entry, whose train/eval sections apply too

    def paths(self, loc: Path_) -> list[Path_]:
        out = [self.arm + loc]
        if self.model is not None and loc[:1] == ("model",):
            out.append(self.model + loc[1:])
        if self.model_entry is not None and loc[:1] in (("train",), ("eval",)):
            out.append(self.model_entry + loc)
        if self.dataset is not None and loc[:1] == ("data",):
            out.append(self.dataset + loc[1:])
        return out + [("base",) + loc]


def _get_path(data: Any, path: Path_) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _equal(have: Any, want: Any) -> bool:
    if isinstance(have, str) and isinstance(want, (list, dict)):
        return have == json.dumps(want)
    if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(want, bool):
        return float(have) == float(want)
    return have == want


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Parse, expand and validate a study file; raises a one-line ConfigError (file, line, key) on any problem.
    `overrides` (`--set KEY=VALUE`) apply to every cell's config after its arm's own keys (a list value sweeps)."""
    path = Path(path)
    text, data, lines = _load_yaml(path)
    return blame_overrides(lambda given: _Loader(path, text, data, lines, given).load(), list(overrides or []),
                           str(path))
