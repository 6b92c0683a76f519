"""A cell's setting in the report: the swept axis values of its arm (JSON `settings`), a short label (`setting`), their
readable columns and sort order, and the arms' order (the baseline first)."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ablate.results.rows import name_single_runs, single_runs

DEFAULT_BASELINE = "vanilla"


NO_SETTING = ""


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


def settings_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The settings JSON of each row expanded into one column per swept key (NaN where a row lacks it)."""
    records = [json.loads(s) if s else {} for s in rows["settings"]]
    return pd.DataFrame.from_records(records, index=rows.index) if records else pd.DataFrame(index=rows.index)
