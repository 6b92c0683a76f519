"""Reading a study file's parts, each checked with a one-line error naming the file, the line and the key: the
datasets, models and seeds lists, an arm's header and zip groups, exclude entries and their matching, the selection
rule, published references and the protocol card, and a search arm's space (ablate.sweep.study puts them together).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ablate.core.config import (
    ConfigError,
    RunConfig,
    canonical_dict,
    flatten,
    model_name,
)
from ablate.core.config_reading import explain, parse_override, suggest
from ablate.core.errors import shorten
from ablate.metrics.schema import SELECT, is_metric_column
from ablate.results.layout import MAX_NAME
from ablate.study.protocol import TOPICS, Protocol, Setting, config_value, same_value
from ablate.study.references import Reference, ReferenceConventions
from ablate.study.selection import Condition, parse_where
from ablate.sweep.cells import Cell, matches
from ablate.sweep.grid import Path_
from ablate.sweep.search_space import SearchSpec

STUDY_KEYS = ["study", "description", "base", "datasets", "models", "seeds", "arms", "exclude", "references",
              "protocol", "baseline", "select", "storage"]
ARM_KEYS = ["name", "description", "techniques", "zip", "exclude", "data", "model", "train", "eval", "search"]
LABEL_KEYS = ["arm", "dataset", "model", "seed"]
MODEL_ENTRY_KEYS = ["label", "model", "train", "eval"]  # the long form of a models entry
MAX_SETTINGS = 10_000  # settings of one arm (its grid); each is validated, and each seed makes it a cell
MAX_CELLS = 20_000  # cells of a whole study (the largest shipped study has 45)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")



def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class StudyReader:
    """The parts of a parsed study file; every error names the file, the line and the key."""

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

    def validate(self, data: dict[str, Any], where: str, sources: "Sources") -> RunConfig:
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
        """`select: valid.nll` or `select: {by: valid.nll, where: "valid.au >= 8"}` (ablate.study.selection)."""
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
                if matches(entry, flat[id(cell)], cell):
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
        """The study's protocol card (ablate.study.protocol): required beside published numbers; every topic covered;
        each `expect` holds in every cell of the arms it covers, unless the entry says why not (`reduced:`)."""
        raw = self.data.get("protocol")
        if raw is None:
            if has_references:
                raise self.error(("references",), "a study with published numbers needs its protocol card: add "
                                 "protocol: {paper, code, settings: [{topic, paper, source, expect}, ...]}, every "
                                 "setting the paper or its code fixes with its source (see ablate/study/protocol.py and "
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
                    search: dict[str, Any], sources: "Sources") -> SearchSpec:
        """A search of one arm on one dataset × model × seed, its space's corners validated as run configs (so a
        misspelt key or an out-of-range bound is an error now, not in the middle of the study)."""
        spec = SearchSpec(arm=arm, dataset=dataset, model=model, seed=seed, base={**raw, "seed": seed},
                          where=[[c.column, c.op, c.value] for c in self.select_where], **search)
        for corner in spec.corners():
            point = ", ".join(f"{k}={v}" for k, v in corner.items())
            self.validate(spec.raw_at(corner), f"arm '{arm}' (search space {point})", sources)
        return spec

    def references(self, arms: list[str], datasets: list[str], models: list[str]) -> list[Reference]:
        """The study's published numbers (ablate.study.references), each naming an arm (and dataset/model) it has."""
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


@dataclass(frozen=True)
class Sources:
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
