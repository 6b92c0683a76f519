"""Remedies at equal rate (Alemi et al. 2018): each arm's front in the rate–distortion plane over every cell, and Rec,
NLL, MI and AU interpolated along it at common KL values (the matched-rate table)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ablate.report.significance import _measurement_se, combined_se

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
