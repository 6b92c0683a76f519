"""The report's numbers, as pure pandas: no files, no plotting, no formatting of text.

Inputs are the frames of one study: `ok` and `failed` result rows (ablate.results.rows.load_results) and the
study's manifest (one row per expected cell: cell_id, arm, dataset, model, seed, settings JSON; may be None).
`attach_settings` adds to each result row its `settings` (JSON of the swept axis values of its cell within its
arm) and `setting` (a short label); every other function groups by

    dataset × model × arm × setting      (the seeds of one group are its repetitions)

- `aggregate`: mean, std (ddof 1) and n over seeds of each metric, and the collapse flag (AU = 0 or KL < 0.1);
- `best_mask`: the best group per column within each dataset × model, by the schema's direction (KL: none);
- `coverage`, `missing_cells`, `failures`: expected / succeeded / failed / missing cells per arm;
- `select_settings`: per arm, the setting with the best mean of a validation metric;
- `best_per_technique`: those settings on the test split, with the paired difference against a baseline arm
  (the plain VAE, `vanilla`) over the seeds the two share, and a two-sided paired t-test (`paired_t_test`,
  with the t distribution from the regularized incomplete beta function, `betainc`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ablate.metrics.schema import SELECT, in_table
from ablate.study.selection import Condition, admits
from ablate.results.rows import name_single_runs, single_runs
from ablate.report.schema import COLLAPSE_KL, metrics_in
from ablate.metrics.schema import Metric, metric

GROUP = ["dataset", "model", "arm", "setting"]
PANEL = ["dataset", "model"]
DEFAULT_BASELINE = "vanilla"
DEFAULT_SELECT = SELECT   # the first present is used (the one rule of "best": ablate.metrics.schema.SELECT)
SIGNIFICANCE = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
NO_SETTING = ""


# ----------------------------------------------------------------------------- settings of a cell


def _setting_value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def setting_label(settings: dict[str, Any], all_keys: Iterable[str] = ()) -> str:
    """'lambda_per_dim=0.25, lr=0.001': the last part of each dotted key, longer where two would clash."""
    if not settings:
        return NO_SETTING
    keys = sorted(set(settings) | set(all_keys))
    parts = []
    for key in sorted(settings):
        segments = key.split(".")
        for n in range(1, len(segments) + 1):
            short = ".".join(segments[-n:])
            if sum(1 for k in keys if k == short or k.endswith("." + short)) == 1:
                break
        parts.append(f"{short}={_setting_value(settings[key])}")
    return ", ".join(parts)


def _sort_key(value: Any) -> tuple:
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (1, str(value))


def settings_sort_key(settings_json: str) -> tuple:
    settings = json.loads(settings_json) if settings_json else {}
    return tuple((k, _sort_key(settings[k])) for k in sorted(settings))


def readable_settings(rows: pd.DataFrame) -> pd.DataFrame:
    """A row's config as the settings a reader compares: `techniques` (the names switched on, or 'none'), each
    technique's fields as `<technique>.<field>`, and every other key as `<section>.<key>`; not the seed, the
    technique versions or the JSON markers of a technique without fields."""
    out: dict[str, pd.Series] = {}
    if "techniques" in rows:
        def names(text: Any) -> str:
            try:
                return ", ".join(sorted(json.loads(text).get("config", {}))) or "none"
            except (TypeError, ValueError, AttributeError):
                return "?"
        out["techniques"] = rows["techniques"].map(names)
    for column in rows.columns:
        if not column.startswith("config.") or column == "config.seed":
            continue
        key = column[len("config."):]
        parts = key.split(".")
        if parts[0] == "technique_versions" or (parts[0] == "techniques" and len(parts) <= 2):
            continue
        out[".".join(parts[1:]) if parts[0] == "techniques" else key] = rows[column]
    return pd.DataFrame(out, index=rows.index)


def infer_settings(rows: pd.DataFrame, by: Sequence[str] = ("dataset", "model", "arm")) -> pd.Series:
    """Settings of rows with no manifest entry: the readable settings (`readable_settings`) that vary between the
    rows of a group (an arm of a study; all the single runs of a dataset × model)."""
    out = pd.Series("{}", index=rows.index, dtype=object)
    readable = readable_settings(rows)
    for _, part in rows.groupby(list(by), dropna=False, sort=False):
        values = readable.loc[part.index]
        varying = [c for c in values.columns if values[c].astype(str).nunique(dropna=False) > 1]
        for idx in part.index:
            out.at[idx] = json.dumps({c: _plain(values.at[idx, c]) for c in varying}, sort_keys=True)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def attach_settings(rows: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.DataFrame:
    """A copy of result rows with `settings` (JSON) and `setting` (label); arm/dataset/model are the manifest's
    labels for the cells it lists (a study may label a seq2seq model 't5'), else the row's, filled where empty."""
    rows = rows.copy()
    if rows.empty:
        for col in ("settings", "setting", "arm", "dataset", "model"):
            if col not in rows:
                rows[col] = pd.Series(dtype=object)
        return rows
    single = single_runs(rows)
    if "arm" in rows:  # `ablate run` rows: each run is its own arm, shown by its name (--name)
        rows["arm"] = name_single_runs(rows)
    for col, default in (("arm", "run"), ("dataset", "?"), ("model", "?")):
        if col not in rows:
            rows[col] = default
        rows[col] = rows[col].fillna(default).astype(str)
    known = {}
    if manifest is not None and not manifest.empty:
        known = dict(zip(manifest["cell_id"], manifest["settings"]))
    in_manifest = rows["cell_id"].isin(known.keys()) if "cell_id" in rows else pd.Series(False, index=rows.index)
    if in_manifest.any():  # the study's labels (e.g. model 't5' for a seq2seq entry) over the config names
        for col in ("arm", "dataset", "model"):
            label = dict(zip(manifest["cell_id"], manifest[col].astype(str)))
            rows.loc[in_manifest, col] = rows.loc[in_manifest, "cell_id"].map(label)
    settings = pd.Series("{}", index=rows.index, dtype=object)
    if in_manifest.any():
        settings[in_manifest] = rows.loc[in_manifest, "cell_id"].map(known)
    of_study = ~in_manifest & ~single
    if of_study.any():
        settings[of_study] = infer_settings(rows[of_study])
    if (~in_manifest & single).any():  # single runs: what differs between all the runs of a dataset × model
        settings[~in_manifest & single] = infer_settings(rows[~in_manifest & single], by=("dataset", "model"))
    rows["settings"] = settings.map(lambda s: json.dumps(json.loads(s or "{}"), sort_keys=True))
    labels = {}
    for arm, part in rows.groupby("arm", sort=False):
        keys = set().union(*(json.loads(s).keys() for s in part["settings"]))
        for s in part["settings"].unique():
            labels[(arm, s)] = setting_label(json.loads(s), keys)
    rows["setting"] = [labels[(a, s)] for a, s in zip(rows["arm"], rows["settings"])]
    return rows


def arm_order(*frames: pd.DataFrame | None, baseline: str | None = DEFAULT_BASELINE) -> list[str]:
    """Arms in the order of the study (first appearance in the manifest, then in the rows)."""
    seen: list[str] = []
    for frame in frames:
        if frame is None or frame.empty or "arm" not in frame:
            continue
        for arm in frame["arm"].dropna().astype(str):
            if arm not in seen:
                seen.append(arm)
    if baseline in seen:
        seen.remove(baseline)
        seen.insert(0, baseline)
    return seen


def _ordered(frame: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Sort groups: dataset, model, arm (study order), setting (by value)."""
    if frame.empty:
        return frame
    rank = {a: i for i, a in enumerate(arms)}
    key = frame.assign(_arm=frame["arm"].map(lambda a: rank.get(a, len(rank))),
                       _set=frame["settings"].map(settings_sort_key) if "settings" in frame else 0)
    key = key.sort_values(["dataset", "model", "_arm", "_set"], kind="stable")
    return frame.loc[key.index].reset_index(drop=True)


# ----------------------------------------------------------------------------- aggregation


def metric_columns(rows: pd.DataFrame, split: str, names: Sequence[str] | None = None) -> list[Metric]:
    if names is None:
        return metrics_in(rows, split)
    return [metric(n) for n in names if f"{split}.{n}" in rows.columns]


def aggregate(rows: pd.DataFrame, split: str = "test", names: Sequence[str] | None = None,
              arms: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per dataset × model × arm × setting: `<m>.mean`, `<m>.std` (ddof 1), `<m>.n` per metric, `seeds`
    (the seeds present), `n_runs`, `collapsed` (mean AU = 0 or mean KL < COLLAPSE_KL)."""
    metrics = metric_columns(rows, split, names)
    columns = GROUP + ["settings", "seeds", "n_runs"] + [f"{m.name}.{s}" for m in metrics
                                                           for s in ("mean", "std", "n")] + ["collapsed"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    records = []
    for key, part in rows.groupby(GROUP, sort=False):
        rec: dict[str, Any] = dict(zip(GROUP, key))
        rec["settings"] = part["settings"].iloc[0]
        rec["seeds"] = sorted(int(s) for s in part["seed"].dropna())
        rec["n_runs"] = len(part)
        for m in metrics:
            values = part[f"{split}.{m.name}"].astype(float).dropna()
            rec[f"{m.name}.mean"] = values.mean() if len(values) else math.nan
            rec[f"{m.name}.std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            rec[f"{m.name}.n"] = int(len(values))
        records.append(rec)
    out = pd.DataFrame.from_records(records)
    out["collapsed"] = collapsed(out.get("au.mean"), out.get("kl.mean"))
    out = _ordered(out, arms or arm_order(rows))
    return out[columns]


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


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction by the modified Lentz method,
    Press et al., Numerical Recipes, §6.4), using the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) for convergence."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x = {x} is outside [0, 1]")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    tiny, eps = 1e-300, 3e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return math.exp(log_front) * h / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with df degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isnan(t) or df <= 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Two-sided paired t-test of mean(x − y) = 0: mean, std (ddof 1) and n of the differences, t, df, p.
    With n < 2, t and p are NaN. With zero spread, p is 0 for a nonzero mean and 1 for a zero mean."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[~np.isnan(d)]
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2:
        return {"mean": mean, "std": std, "n": n, "t": math.nan, "df": math.nan, "p": math.nan}
    if std == 0.0:
        t = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
        return {"mean": mean, "std": std, "n": n, "t": t, "df": n - 1, "p": 1.0 if mean == 0.0 else 0.0}
    t = mean / (std / math.sqrt(n))
    return {"mean": mean, "std": std, "n": n, "t": t, "df": n - 1, "p": t_two_sided_p(t, n - 1)}


def significance_marker(p: float) -> str:
    if p is None or math.isnan(p):
        return ""
    for threshold, marker in SIGNIFICANCE:
        if p < threshold:
            return marker
    return ""


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
        flags = [collapsed(r.get(f"{split}.au"), r.get(f"{split}.kl")) for _, r in mine.iterrows()]
        rec["collapsed_seeds"] = int(sum(flags))
        rec["collapsed"] = collapsed(rec.get("au.mean"), rec.get("kl.mean"))
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


NOISE_Z = 2.0  # a difference within NOISE_Z combined standard errors of 0 is "within noise" (≈ 95 %)


def _measurement_se(rows: pd.DataFrame, split: str, name: str) -> np.ndarray:
    """Each row's measurement standard error of {split}.{name} ({split}.{name}_se; NaN where not recorded)."""
    column = f"{split}.{name}_se"
    return rows[column].astype(float).to_numpy() if column in rows.columns else np.full(len(rows), math.nan)


def combined_se(values: Sequence[float] | pd.Series, measurement_se: np.ndarray) -> float:
    """The standard error of a mean over seeds with both sources of noise: the seed spread (std / √n, n ≥ 2) and
    the rows' measurement standard errors (√(mean se²) / √n). Added, so conservative: the seed spread already holds
    part of the measurement noise. NaN when neither is known."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return math.nan
    seed = float(values.std(ddof=1)) ** 2 / n if n > 1 else math.nan
    se = np.asarray(measurement_se, dtype=float)
    se = se[~np.isnan(se)]
    meas = float(np.mean(se ** 2)) / n if len(se) else math.nan
    parts = [p for p in (seed, meas) if not math.isnan(p)]
    return math.sqrt(sum(parts)) if parts else math.nan


def within_noise(difference: float, se: float) -> bool:
    """Whether a difference cannot be told from 0: |difference| < NOISE_Z · se (False when se is unknown)."""
    return not math.isnan(se) and not math.isnan(difference) and abs(difference) < NOISE_Z * se


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


def verdict(collapsed_seeds: int, n: int) -> str:
    """Plain words for the per-seed collapse count of a chosen setting."""
    if n == 0:
        return "no results"
    if collapsed_seeds == n:
        return "collapsed"
    if collapsed_seeds == 0:
        return "no collapse"
    return f"collapsed in {collapsed_seeds}/{n} seeds"


# ----------------------------------------------------------------------------- helpers for plots and header


def settings_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The settings JSON of each row expanded into one column per swept key (NaN where a row lacks it)."""
    records = [json.loads(s) if s else {} for s in rows["settings"]]
    return pd.DataFrame.from_records(records, index=rows.index) if records else pd.DataFrame(index=rows.index)


def value_counts(rows: pd.DataFrame, column: str) -> list[tuple[str, int]]:
    """Distinct values of a column with their counts, sorted by value (for provenance in the header)."""
    if rows.empty or column not in rows:
        return []
    counts = rows[column].fillna("").astype(str).value_counts()
    return sorted(((str(k), int(v)) for k, v in counts.items() if k != ""), key=lambda kv: kv[0])


# ----------------------------------------------------------------------------- remedies at equal rate
MATCHED_RATES = (2.0, 5.0, 10.0)  # KL values (nats) where the matched-rate table compares the remedies


def setting_points(rows: pd.DataFrame, split: str, names: Sequence[str]) -> pd.DataFrame:
    """One point per dataset × model × arm × setting (a search trial is a setting of its own): the mean over seeds
    of `kl` and each of `names`, and each one's combined standard error `<name>.se` (seed spread and the rows'
    measurement errors)."""
    keys = ["dataset", "model", "arm", "settings"]
    records = []
    for key, part in rows.groupby(keys, sort=False):
        rec: dict[str, Any] = dict(zip(keys, key))
        for name in ["kl", *names]:
            column = f"{split}.{name}"
            values = part[column].astype(float) if column in part else pd.Series(dtype=float)
            rec[name] = values.mean() if values.notna().any() else math.nan
            rec[f"{name}.se"] = combined_se(values, _measurement_se(part, split, name))
        records.append(rec)
    return pd.DataFrame.from_records(records)


def rate_front(points: pd.DataFrame) -> pd.DataFrame:
    """The lower-left front in the rate–distortion plane (Alemi et al. 2018): the points, by increasing KL, whose
    Rec is below that of every point of smaller KL — for each rate, the best reconstruction this arm reached."""
    ordered = points.dropna(subset=["kl", "rec"]).sort_values(["kl", "rec"], kind="stable")
    keep, best = [], math.inf
    for index, rec in zip(ordered.index, ordered["rec"]):
        if rec < best:
            keep.append(index)
            best = rec
    return ordered.loc[keep]


def _by_rate(points: pd.DataFrame) -> pd.DataFrame:
    """An arm's settings ordered by KL (settings at the same KL averaged): the curve interpolated off the front."""
    ordered = points.dropna(subset=["kl"]).sort_values("kl", kind="stable")
    return ordered.groupby("kl", as_index=False, sort=True).mean(numeric_only=True)


def matched_rate(rows: pd.DataFrame, split: str, rates: Sequence[float] = MATCHED_RATES,
                 names: Sequence[str] = ("rec", "nll", "mi", "au")) -> pd.DataFrame:
    """Each arm's values interpolated (linearly in KL) along its rate front at each of `rates`, with their standard
    errors interpolated alike, where the front covers that KL (no extrapolation). `status`: "front" (interpolated),
    "not reached" (no setting of the arm got to that KL, or all went past it), "beyond front" (settings went past
    it, but with a worse Rec than the front's last point: more rate for more distortion) — then the values are
    interpolated between the arm's two settings nearest in KL on either side, so MI and AU at that rate still
    show. Columns: dataset, model, kl (the target), arm, status, points (settings on the front), <name>,
    <name>.se."""
    present = [n for n in names if f"{split}.{n}" in rows.columns]
    points = setting_points(rows, split, [n for n in present if n != "kl"])
    records = []
    for (dataset, model, arm), part in points.groupby(["dataset", "model", "arm"], sort=False):
        front = rate_front(part)
        for rate in rates:
            rec: dict[str, Any] = {"dataset": dataset, "model": model, "kl": rate, "arm": arm,
                                   "points": len(front)}
            inside = len(front) > 0 and front["kl"].iloc[0] <= rate <= front["kl"].iloc[-1]
            spanned = part["kl"].notna().any() and part["kl"].min() <= rate <= part["kl"].max()
            rec["status"] = "front" if inside else "beyond front" if spanned else "not reached"
            curve = front if inside else _by_rate(part) if spanned else None
            for name in present:
                for suffix in ("", ".se"):
                    column = name + suffix
                    if curve is None:
                        rec[column] = math.nan
                    elif len(curve) == 1:
                        rec[column] = float(curve[column].iloc[0])
                    else:
                        rec[column] = float(np.interp(rate, curve["kl"].to_numpy(), curve[column].to_numpy()))
            records.append(rec)
    return pd.DataFrame.from_records(records)
