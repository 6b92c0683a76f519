"""The report's numbers, as pure pandas: no files, no plotting, no formatting of text.

Inputs are the frames of one study: `ok` and `failed` result rows (ablate.results.rows.ok_and_failed) and the
study's manifest (one row per expected cell: cell_id, arm, dataset, model, seed, settings JSON; may be None).
`attach_settings` adds to each result row its `settings` (JSON of the swept axis values of its cell within its
arm) and `setting` (a short label); every other function groups by

    dataset × model × arm × setting      (the seeds of one group are its repetitions)

- `aggregate`: mean, std (ddof 1) and n over seeds of each metric, and the collapse flag (AU = 0 or KL < 0.1);
- `best_mask`: the best group per column within each dataset × model, by the schema's direction (KL: none);
- `coverage`, `missing_cells`, `failures`: expected / succeeded / failed / missing cells per arm;
- `select_settings`: per arm, the setting with the best mean of a validation metric;
- `best_per_technique`: those settings on the test split, with the paired difference against a baseline arm
  (the plain VAE, `vanilla`) over the seeds the two share, a two-sided paired t-test and the combined standard
  error (ablate.report.significance).

A cell's setting and the arms' order: ablate.report.cell_settings; remedies at equal rate: ablate.report.equal_rate.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ablate.metrics.schema import SELECT, in_table
from ablate.study.selection import Condition, admits
from ablate.report.schema import COLLAPSE_KL, metrics_in
from ablate.metrics.schema import Metric, metric
from ablate.report.cell_settings import DEFAULT_BASELINE, setting_label, settings_sort_key, arm_order, _ordered
from ablate.report.significance import paired_t_test, significance_marker, _measurement_se, combined_se, within_noise

GROUP = ["dataset", "model", "arm", "setting"]
PANEL = ["dataset", "model"]
DEFAULT_SELECT = SELECT   # the first present is used (the one rule of "best": ablate.metrics.schema.SELECT)


# ----------------------------------------------------------------------------- settings of a cell


# ----------------------------------------------------------------------------- aggregation


def metric_columns(rows: pd.DataFrame, split: str, names: Sequence[str] | None = None) -> list[Metric]:
    if names is None:
        return metrics_in(rows, split)
    return [metric(n) for n in names if f"{split}.{n}" in rows.columns]


def aggregate(rows: pd.DataFrame, split: str = "test", names: Sequence[str] | None = None,
              arms: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per dataset × model × arm × setting: `<m>.mean`, `<m>.std` (ddof 1), `<m>.n` per metric, `seeds`
    (the seeds present), `n_runs`, `collapsed` (mean AU = 0 or mean KL < COLLAPSE_KL), `no_latent` (nz 0: never
    flagged as collapsed)."""
    metrics = metric_columns(rows, split, names)
    columns = GROUP + ["settings", "seeds", "n_runs"] + [f"{m.name}.{s}" for m in metrics
                                                           for s in ("mean", "std", "n")] + ["collapsed", "no_latent"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    records = []
    for key, part in rows.groupby(GROUP, sort=False):
        rec: dict[str, Any] = dict(zip(GROUP, key))
        rec["settings"] = part["settings"].iloc[0]
        rec["seeds"] = sorted(int(s) for s in part["seed"].dropna())
        rec["n_runs"] = len(part)
        rec["no_latent"] = latent_free(part)
        for m in metrics:
            values = part[f"{split}.{m.name}"].astype(float).dropna()
            rec[f"{m.name}.mean"] = values.mean() if len(values) else math.nan
            rec[f"{m.name}.std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            rec[f"{m.name}.n"] = int(len(values))
        records.append(rec)
    out = pd.DataFrame.from_records(records)
    out["collapsed"] = collapsed(out.get("au.mean"), out.get("kl.mean")) & ~out["no_latent"].astype(bool)
    out = _ordered(out, arms or arm_order(rows))
    return out[columns]


def latent_free(part: pd.DataFrame) -> bool:
    """Whether these runs have no latent at all (`model.nz: 0`, a language model): AU 0 and KL 0 by construction,
    which is not posterior collapse."""
    return "config.model.nz" in part.columns and len(part) > 0 and bool((part["config.model.nz"] == 0).all())


def has_latent(rows: pd.DataFrame) -> np.ndarray:
    """Per row, whether the run has a latent (`model.nz` > 0; rows without the column count as having one)."""
    if "config.model.nz" not in rows.columns:
        return np.ones(len(rows), dtype=bool)
    return (rows["config.model.nz"].fillna(1) > 0).to_numpy()


def collapsed(au: pd.Series | float | None, kl: pd.Series | float | None) -> Any:
    """The collapse flag: AU = 0 or KL < COLLAPSE_KL (either missing counts as not flagged by it)."""
    if isinstance(au, pd.Series) or isinstance(kl, pd.Series):
        index = au.index if isinstance(au, pd.Series) else kl.index
        au_s = au if isinstance(au, pd.Series) else pd.Series(math.nan, index=index)
        kl_s = kl if isinstance(kl, pd.Series) else pd.Series(math.nan, index=index)
        return ((au_s == 0) | (kl_s < COLLAPSE_KL)).fillna(False).astype(bool)
    flag = False
    if au is not None and not math.isnan(au):
        flag = flag or au == 0
    if kl is not None and not math.isnan(kl):
        flag = flag or kl < COLLAPSE_KL
    return bool(flag)


def best_mask(agg: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """True where a group holds the best mean of a column within its dataset × model (ties all marked);
    metrics without a direction (KL) are never marked."""
    mask = pd.DataFrame(False, index=agg.index, columns=list(names))
    for name in names:
        m = metric(name)
        col = f"{name}.mean"
        if m.direction is None or col not in agg:
            continue
        for _, part in agg.groupby(PANEL, sort=False):
            values = part[col].astype(float).dropna()
            if values.empty:
                continue
            best = values.min() if m.direction == "min" else values.max()
            mask.loc[values.index[np.isclose(values, best, rtol=1e-12, atol=0.0)], name] = True
    return mask


# ----------------------------------------------------------------------------- coverage and failures


def _cell_status(manifest: pd.DataFrame | None, ok: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (manifest cells, then result-only cells): status ok | failed | missing, `expected`."""
    ok_ids = set(ok["cell_id"]) if not ok.empty else set()
    failed_ids = set(failed["cell_id"]) if not failed.empty else set()
    cols = ["cell_id", "arm", "dataset", "model", "seed", "settings"]
    parts = []
    if manifest is not None and not manifest.empty:
        parts.append(manifest[cols].assign(expected=True))
    known = set(parts[0]["cell_id"]) if parts else set()
    for frame in (ok, failed):
        if frame.empty:
            continue
        extra = frame[~frame["cell_id"].isin(known)].drop_duplicates("cell_id")
        if not extra.empty:
            parts.append(extra[cols].assign(expected=False))
            known |= set(extra["cell_id"])
    if not parts:
        return pd.DataFrame(columns=cols + ["expected", "status"])
    cells = pd.concat(parts, ignore_index=True)
    cells["status"] = ["ok" if c in ok_ids else "failed" if c in failed_ids else "missing" for c in cells["cell_id"]]
    return cells


def coverage(manifest: pd.DataFrame | None, ok: pd.DataFrame, failed: pd.DataFrame,
             arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Per dataset × model × arm: expected (manifest cells), succeeded, failed (every attempt failed so far),
    missing (not run yet), extra (results of cells not in the manifest: a study that shrank or changed).
    Without a manifest, expected and missing are NaN: nothing says what was expected."""
    cells = _cell_status(manifest, ok, failed)
    cols = ["dataset", "model", "arm", "expected", "succeeded", "failed", "missing", "extra"]
    if cells.empty:
        return pd.DataFrame(columns=cols)
    has_manifest = manifest is not None and not manifest.empty
    records = []
    for (dataset, model, arm), part in cells.groupby(["dataset", "model", "arm"], sort=False):
        exp = part[part["expected"]]
        records.append({
            "dataset": dataset, "model": model, "arm": arm,
            "expected": len(exp) if has_manifest else math.nan,
            "succeeded": int((exp["status"] == "ok").sum()) if has_manifest else int((part["status"] == "ok").sum()),
            "failed": int((exp["status"] == "failed").sum()) if has_manifest
            else int((part["status"] == "failed").sum()),
            "missing": int((exp["status"] == "missing").sum()) if has_manifest else math.nan,
            "extra": int((~part["expected"]).sum()) if has_manifest else 0,
        })
    out = pd.DataFrame.from_records(records)
    rank = {a: i for i, a in enumerate(arms or arm_order(manifest, ok, failed))}
    out = out.assign(_r=out["arm"].map(lambda a: rank.get(a, len(rank))))
    return out.sort_values(["dataset", "model", "_r"], kind="stable").drop(columns="_r").reset_index(drop=True)


def coverage_total(cov: pd.DataFrame) -> dict[str, float]:
    return {c: (cov[c].sum(min_count=1) if c in cov else math.nan)
            for c in ("expected", "succeeded", "failed", "missing", "extra")}


def missing_cells(manifest: pd.DataFrame | None, ok: pd.DataFrame, failed: pd.DataFrame) -> pd.DataFrame:
    """The manifest cells without a successful result: status failed or missing."""
    cells = _cell_status(manifest, ok, failed)
    cols = ["dataset", "model", "arm", "setting", "seed", "cell_id", "status"]
    if cells.empty:
        return pd.DataFrame(columns=cols)
    keys = {arm: set().union(*(json.loads(s or "{}").keys() for s in part["settings"]))
            for arm, part in cells.groupby("arm", sort=False)}
    cells["setting"] = [setting_label(json.loads(s or "{}"), keys[a]) for a, s in zip(cells["arm"], cells["settings"])]
    out = cells[cells["expected"] & (cells["status"] != "ok")]
    rank = {a: i for i, a in enumerate(arm_order(manifest))}
    out = out.assign(_r=out["arm"].map(lambda a: rank.get(a, len(rank))),
                     _s=out["settings"].map(settings_sort_key))
    out = out.sort_values(["dataset", "model", "_r", "_s", "seed"], kind="stable")
    return out[cols].reset_index(drop=True)


def failures(failed: pd.DataFrame, ok: pd.DataFrame) -> pd.DataFrame:
    """Every failed attempt: its cell, seed, attempt, error class and message, and whether the cell succeeded
    later (a retry)."""
    cols = ["dataset", "model", "arm", "setting", "seed", "cell_id", "attempt", "error_class", "error_message",
            "recovered"]
    if failed.empty:
        return pd.DataFrame(columns=cols)
    ok_ids = set(ok["cell_id"]) if not ok.empty else set()
    out = failed.assign(recovered=failed["cell_id"].isin(ok_ids))
    out = out.sort_values(["dataset", "model", "arm", "cell_id", "attempt"], kind="stable")
    return out[cols].reset_index(drop=True)


# ----------------------------------------------------------------------------- paired t-test


# ----------------------------------------------------------------------------- best per technique


def selection_metric(rows: pd.DataFrame, select: str | Sequence[str] = DEFAULT_SELECT) -> str | None:
    """The validation column used to choose a setting: the first of `select` present in the rows."""
    candidates = [select] if isinstance(select, str) else list(select)
    for column in candidates:
        if column in rows.columns and rows[column].notna().any():
            return column
    return None


SELECTED_COLUMNS = ["dataset", "model", "arm", "setting", "settings", "select", "select.mean", "select.n", "n_settings"]


def select_settings(rows: pd.DataFrame, select: str | Sequence[str] = DEFAULT_SELECT,
                    arms: Sequence[str] | None = None, where: Sequence[Condition] = (),
                    exempt: str | None = None) -> pd.DataFrame:
    """Per dataset × model × arm, the setting with the best mean (over seeds) of the validation column, by the
    schema direction of its metric (ties: the first setting in value order). Without a validation column (runs
    that evaluate only test) an arm of one setting is its own choice and an arm of several is left out: nothing
    can choose among them. `where` (the study's select constraint, ablate.study.selection): only settings whose mean
    over seeds meets it are candidates; an arm with none is left out — except `exempt` (the baseline, which the
    costs are measured against: a plain VAE collapses by definition). Columns: dataset, model, arm, setting,
    settings, select (the column), select.mean, select.n, n_settings."""
    cols = SELECTED_COLUMNS
    column = selection_metric(rows, select)
    if rows.empty:
        return pd.DataFrame(columns=cols)
    if column is None:
        return _only_settings(rows, arms)[cols]
    m = metric(column.split(".", 1)[1])
    sign = -1.0 if m.direction == "max" else 1.0
    means = (rows.groupby(GROUP + ["settings"], sort=False)[column].agg(["mean", "count"]).reset_index())
    if where:  # each setting's seed-mean of the constrained columns
        present = [c.column for c in where if c.column in rows.columns]
        constrained = rows.groupby(GROUP + ["settings"], sort=False)[present].mean().reset_index()
        means["_ok"] = [admits(where, r) for r in constrained.to_dict("records")]
    records = []
    for (dataset, model, arm), part in means.groupby(["dataset", "model", "arm"], sort=False):
        n_settings = len(part)
        if where and arm != exempt:
            part = part[part["_ok"]]
            if part.empty:
                continue  # no setting of this arm meets the constraint
        part = part.assign(_o=part["settings"].map(settings_sort_key)).sort_values("_o", kind="stable")
        scored = part.dropna(subset=["mean"])
        pick = scored.loc[(sign * scored["mean"]).idxmin()] if not scored.empty else part.iloc[0]
        records.append({"dataset": dataset, "model": model, "arm": arm, "setting": pick["setting"],
                        "settings": pick["settings"], "select": column, "select.mean": pick["mean"],
                        "select.n": int(pick["count"]), "n_settings": n_settings})
    if not records:
        return pd.DataFrame(columns=cols)
    return _ordered(pd.DataFrame.from_records(records), arms or arm_order(rows))[cols]


def _only_settings(rows: pd.DataFrame, arms: Sequence[str] | None) -> pd.DataFrame:
    """select_settings without a validation column: each arm that has exactly one setting."""
    records = []
    for (dataset, model, arm), part in rows.groupby(["dataset", "model", "arm"], sort=False):
        if part["settings"].nunique() == 1:
            first = part.iloc[0]
            records.append({"dataset": dataset, "model": model, "arm": arm, "setting": first["setting"],
                            "settings": first["settings"], "select": None, "select.mean": float("nan"),
                            "select.n": 0, "n_settings": 1})
    cols = SELECTED_COLUMNS
    return _ordered(pd.DataFrame.from_records(records, columns=cols), arms or arm_order(rows))


def best_per_technique(rows: pd.DataFrame, baseline: str = DEFAULT_BASELINE,
                       select: str | Sequence[str] = DEFAULT_SELECT, split: str = "test",
                       names: Sequence[str] | None = None, deltas: Sequence[str] | None = None,
                       arms: Sequence[str] | None = None, where: Sequence[Condition] = ()) -> pd.DataFrame:
    """Per dataset × model × arm: the setting chosen on validation (`select_settings`), its `split` metrics
    (mean/std/n over seeds), the per-seed collapse count, and for each metric in `deltas` the paired difference
    arm − baseline over the seeds both have (the baseline at its own chosen setting): `d.<m>.mean`, `.std`,
    `.n`, `.t`, `.p`, `.marker` (empty for the baseline itself, or when the baseline is absent)."""
    chosen = select_settings(rows, select, arms, where, exempt=baseline)
    metrics = metric_columns(rows, split, names)
    deltas = in_table("delta") if deltas is None else deltas
    delta_names = [d for d in deltas if f"{split}.{d}" in rows.columns]
    records = []
    for _, pick in chosen.iterrows():
        panel = rows[(rows["dataset"] == pick["dataset"]) & (rows["model"] == pick["model"])]
        mine = panel[(panel["arm"] == pick["arm"]) & (panel["settings"] == pick["settings"])]
        rec: dict[str, Any] = pick.to_dict()
        rec["seeds"] = sorted(int(s) for s in mine["seed"])
        for m in metrics:
            values = mine[f"{split}.{m.name}"].astype(float).dropna()
            rec[f"{m.name}.mean"] = values.mean() if len(values) else math.nan
            rec[f"{m.name}.std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            rec[f"{m.name}.n"] = int(len(values))
            rec[f"{m.name}.se"] = combined_se(values, _measurement_se(mine, split, m.name))
        rec["no_latent"] = latent_free(mine)
        flags = [collapsed(r.get(f"{split}.au"), r.get(f"{split}.kl")) for _, r in mine.iterrows()]
        rec["collapsed_seeds"] = 0 if rec["no_latent"] else int(sum(flags))
        rec["collapsed"] = not rec["no_latent"] and collapsed(rec.get("au.mean"), rec.get("kl.mean"))
        base_pick = chosen[(chosen["dataset"] == pick["dataset"]) & (chosen["model"] == pick["model"])
                           & (chosen["arm"] == baseline)]
        base = None
        if pick["arm"] != baseline and not base_pick.empty:
            base = panel[(panel["arm"] == baseline) & (panel["settings"] == base_pick["settings"].iloc[0])]
        for name in delta_names:
            res = {"mean": math.nan, "std": math.nan, "n": 0, "t": math.nan, "df": math.nan, "p": math.nan}
            if base is not None:
                a = mine.drop_duplicates("seed").set_index("seed")[f"{split}.{name}"].astype(float)
                b = base.drop_duplicates("seed").set_index("seed")[f"{split}.{name}"].astype(float)
                shared = sorted(set(a.dropna().index) & set(b.dropna().index))
                res = paired_t_test(a.loc[shared].to_numpy(), b.loc[shared].to_numpy())
                se_a = _measurement_se(mine.drop_duplicates("seed").set_index("seed").loc[shared], split, name)
                se_b = _measurement_se(base.drop_duplicates("seed").set_index("seed").loc[shared], split, name)
                res["se"] = combined_se(a.loc[shared] - b.loc[shared], np.hypot(se_a, se_b))
            se = res.get("se", math.nan)
            for key in ("mean", "std", "n", "t", "p"):
                rec[f"d.{name}.{key}"] = res[key]
            rec[f"d.{name}.se"] = se
            rec[f"d.{name}.within_noise"] = within_noise(res["mean"], se)
            rec[f"d.{name}.marker"] = "≈" if rec[f"d.{name}.within_noise"] else significance_marker(res["p"])
        records.append(rec)
    return pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=list(chosen.columns))


def pareto_front(frame: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """Whether each row is on the Pareto front of the objectives (each minimised or maximised by its metric's
    declared direction): no other row is at least as good on all and better on one."""
    signs = [(-1.0 if metric(o.split(".", 1)[1]).direction == "max" else 1.0) for o in objectives]
    values = np.column_stack([frame[o].astype(float).to_numpy() * s for o, s in zip(objectives, signs)])
    on_front = []
    for i in range(len(values)):
        dominated = np.any(np.all(values <= values[i], axis=1) & np.any(values < values[i], axis=1))
        on_front.append(bool(np.isfinite(values[i]).all() and not dominated))
    return pd.Series(on_front, index=frame.index)


def search_objectives(trials: pd.DataFrame, fallback: str | None) -> list[str]:
    """The objectives a search's trials were told (column `search_objectives`), or [fallback] for rows that do not
    record them; only columns the rows have."""
    recorded = trials["search_objectives"].dropna() if "search_objectives" in trials else pd.Series(dtype=object)
    names = str(recorded.iloc[0]).split(",") if not recorded.empty else [fallback] if fallback else []
    return [o for o in names if o in trials]


def best_search_trials(rows: pd.DataFrame, select: str | Sequence[str] = DEFAULT_SELECT,
                       where: Sequence[Condition] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of search arms (column `search`) reduced to each dataset × model × arm × seed's best trial, chosen on
    validation: on the Pareto front of the search's objectives, the best by the selection rule. Its settings become
    one shared label ('best of N trials') so the seeds aggregate like a grid cell's; with `where` (the study's
    select constraint) only trials that meet it are candidates, when any does. Returns (rows for the tables,
    every search trial with `pareto` marked, for the search plots)."""
    if rows.empty or "search" not in rows or not rows["search"].fillna("").astype(bool).any():
        return rows, rows.iloc[0:0]
    searched = rows["search"].fillna("").astype(bool)
    trials = rows[searched].copy()
    column = selection_metric(trials, select)
    picks, fronts = [], []
    for _, part in trials.groupby(["dataset", "model", "arm", "seed"], sort=False):
        objectives = search_objectives(part, column)
        front = pareto_front(part, objectives) if objectives else pd.Series(True, index=part.index)
        fronts.append(front)
        if where:
            feasible = pd.Series([admits(where, r) for r in part.to_dict("records")], index=part.index)
            if feasible.any():
                part, front = part[feasible], pareto_front(part[feasible], objectives) if objectives else \
                    pd.Series(True, index=part[feasible].index)
        candidates = part[front] if front.any() else part
        sign = -1.0 if column and metric(column.split(".", 1)[1]).direction == "max" else 1.0
        scored = candidates.dropna(subset=[column]) if column else candidates
        best = (sign * scored[column]).idxmin() if column and not scored.empty else candidates.index[0]
        picks.append((best, len(part)))
    trials["pareto"] = pd.concat(fronts) if fronts else False
    chosen = rows.loc[[i for i, _ in picks]].copy()
    budget = {i: n for i, n in picks}
    label = {i: json.dumps({"search": f"best of {budget[i]} trials"}) for i in chosen.index}
    chosen["settings"] = [label[i] for i in chosen.index]
    chosen["setting"] = [f"best of {budget[i]} trials" for i in chosen.index]
    return pd.concat([rows[~searched], chosen]).sort_index(), trials


def verdict(collapsed_seeds: int, n: int, no_latent: bool = False) -> str:
    """Plain words for the per-seed collapse count of a chosen setting."""
    if n == 0:
        return "no results"
    if no_latent:
        return "no latent"
    if collapsed_seeds == n:
        return "collapsed"
    if collapsed_seeds == 0:
        return "no collapse"
    return f"collapsed in {collapsed_seeds}/{n} seeds"


# ----------------------------------------------------------------------------- helpers for plots and header


def value_counts(rows: pd.DataFrame, column: str) -> list[tuple[str, int]]:
    """Distinct values of a column with their counts, sorted by value (for provenance in the header)."""
    if rows.empty or column not in rows:
        return []
    counts = rows[column].fillna("").astype(str).value_counts()
    return sorted(((str(k), int(v)) for k, v in counts.items() if k != ""), key=lambda kv: kv[0])


# ----------------------------------------------------------------------------- remedies at equal rate


