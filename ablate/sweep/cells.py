"""A study as expanded: its cells (one resolved run config each, named by its hash) and what it declares."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ablate.core.config import RunConfig, canonical_dict
from ablate.metrics.schema import SELECT
from ablate.study.protocol import Protocol, config_value
from ablate.study.references import Reference
from ablate.study.selection import Condition
from ablate.sweep.search_space import SearchSpec


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
    protocol: Protocol | None = None  # a reproduction's card (ablate.study.protocol), required beside references
    select_by: tuple[str, ...] = SELECT  # the validation column(s) ranking settings and trials (ablate.study.selection)
    select_where: tuple[Condition, ...] = ()  # the constraint they must meet
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE applied to every cell
    storage: str | None = None  # the study's own storage URL (--storage and $ABLATE_STORAGE override it)
    searches: list[SearchSpec] = field(default_factory=list)  # search arms: one per dataset × model × seed

    @property
    def hash(self) -> str:
        """sha256 of the study file's text (and of the --set overrides it was run with, when any)."""
        return study_hash(self.text, self.overrides)

    def only_arms(self, arms: list[str]) -> "Study":
        """The same study narrowed to some of its arms (`ablate sweep --arms`): their cells and searches only."""
        return replace(self, cells=[c for c in self.cells if c.arm in arms], arms=[a for a in self.arms if a in arms],
                       searches=[s for s in self.searches if s.arm in arms],
                       settings_per_arm={a: n for a, n in self.settings_per_arm.items() if a in arms})

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
        the cell's arm (ablate.engine.preflight)."""
        from ablate.core.config_reading import build_config

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


# ---------------------------------------------------------------- exclude entries


def matches_labels(entry: dict[str, Any], labels: dict[str, Any]) -> bool:
    """Whether an exclude entry names only the labels arm / dataset / model (no seed, no config key) and
    matches these; such an entry is applied before the cell's config is validated."""
    if not entry or not set(entry) <= set(labels):
        return False
    return all(labels[k] in want if isinstance(want, list) else labels[k] == want for k, want in entry.items())


def matches(entry: dict[str, Any], flat: dict[str, Any], cell: Cell) -> bool:
    """Whether an exclude entry matches a cell: every key equal (a list value: any of them) in its flattened config
    and labels (`flat`), a section or technique named whole compared as a mapping."""
    for key, want in entry.items():
        if key in flat:
            have = flat[key]
        else:  # a section or technique named as a whole (e.g. techniques.free_bits): compare the mapping
            have = config_value(canonical_dict(cell.config), key)[1]
        if isinstance(want, list) and not (isinstance(have, str) and have.startswith("[")):
            if not any(_equal(have, w) for w in want):
                return False
        elif not _equal(have, want):
            return False
    return True


def _equal(have: Any, want: Any) -> bool:
    if isinstance(have, str) and isinstance(want, (list, dict)):
        return have == json.dumps(want)
    if isinstance(have, (int, float)) and isinstance(want, (int, float)) and not isinstance(want, bool):
        return float(have) == float(want)
    return have == want
