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

import math
import re
from pathlib import Path
from typing import Any

from ablate.core.config import config_hash
from ablate.core.config_reading import (
    apply_overrides,
    blame_overrides,
    read_yaml_file,
    suggest,
)
from ablate.core.safe_yaml import line_map
from ablate.sweep.cells import Cell, Study, matches_labels
from ablate.sweep.grid import (
    Path_,
    apply,
    arm_units,
    find_axes,
    merge_cell_sections,
    product,
)
from ablate.sweep.search_space import SearchError, SearchSpec, parse_search
from ablate.sweep.study_parts import MAX_CELLS, MAX_SETTINGS, StudyReader, Sources


def _load_yaml(path: Path) -> tuple[str, dict[str, Any], dict[Path_, int]]:
    text, data, root = read_yaml_file(path, "study")
    lines: dict[Path_, int] = {}
    if root is not None:
        line_map(root, (), lines)
    return text, data, lines


class _Loader(StudyReader):
    """Builds a Study from a parsed file: every arm × dataset × model × setting × seed, validated, excluded."""

    def expand_arm(self, arm: dict[str, Any], merged: dict[str, Any], at: Path_, sources: "Sources"
                   ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(resolved raw config, settings) for every setting of one arm's axes."""
        axes = find_axes(merged, merged)
        for path, values in axes.items():
            if not values:
                raise self.error(at + path, "an empty list: a swept key needs at least one value",
                                 *sources.paths(path))
        units = arm_units(axes, self.zip_groups(arm, at, axes))
        settings_count = math.prod(len(u) for u in units)
        if settings_count > MAX_SETTINGS:
            raise self.error(at, f"the arm's swept keys multiply to {settings_count:,} settings (limit "
                             f"{MAX_SETTINGS:,}); sweep fewer values, pair keys with zip, or split the study")
        return [apply(merged, setting) for setting in product(units)]

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
                    sources = Sources(at, (m_at + ("model",) if long_form else m_at) if m_data is not None else None,
                                       d_at if d_data else None, m_at if long_form else None)
                    settings = self.expand_arm(arm, merged, at, sources)
                    settings_seen = max(settings_seen, len(settings))
                    labels = {"arm": arm_name, "dataset": d_label, "model": m_label}
                    label_excluded = [e_at for entry, e_at in excludes if matches_labels(entry, labels)]
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



def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Parse, expand and validate a study file; raises a one-line ConfigError (file, line, key) on any problem.
    `overrides` (`--set KEY=VALUE`) apply to every cell's config after its arm's own keys (a list value sweeps)."""
    path = Path(path)
    text, data, lines = _load_yaml(path)
    return blame_overrides(lambda given: _Loader(path, text, data, lines, given).load(), list(overrides or []),
                           str(path))
