"""The verdict table, first in a study's report: per arm, collapsed or not, its cost against the baseline and what z
carries (KL, MI, AU with their intervals), and the ★ for the best uncollapsed arm and those within noise of it."""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from ablate.metrics.schema import SELECT, in_table, metric
from ablate.report import significance, tables
from ablate.report.schema import COLLAPSE_KL
from ablate.report.study_tables import metric_col
from ablate.report.table_model import Cell, Col, Table, _num
from ablate.study.selection import Condition





def verdict_costs() -> list[str]:
    """The verdict's costs, paired differences against the baseline: the metrics that decide "best" (SELECT)."""
    return [column.split(".", 1)[1] for column in SELECT]


def verdict_gains() -> list[str]:
    """What z carries in the verdict (the metrics declared for it): KL, MI, AU."""
    return in_table("verdict")


def verdict_mi(rows: pd.DataFrame, split: str) -> str:
    """The MI the verdict reads: the paired estimator when the rows record it, else He et al.'s."""
    column = f"{split}.mi_paired"
    return "mi_paired" if column in rows and rows[column].notna().any() else "mi"


def probe_gain(rows: pd.DataFrame, split: str) -> pd.Series:
    """Per row: the mean over probed factors of (probe accuracy − majority-class accuracy); NaN without probes."""
    factors = [c[len(f"{split}.probe."):] for c in rows.columns if c.startswith(f"{split}.probe.")]
    pairs = [(f"{split}.probe.{f}", f"{split}.probe_majority.{f}") for f in factors
             if f"{split}.probe_majority.{f}" in rows.columns]
    if not pairs:
        return pd.Series(math.nan, index=rows.index)
    gains = pd.concat([rows[a].astype(float) - rows[b].astype(float) for a, b in pairs], axis=1)
    return gains.mean(axis=1)


def mi_noise(rows: pd.DataFrame, split: str) -> float | None:
    """The MI estimate's sampling noise √(nz / 2N) (median over rows), None when nz or N is not recorded."""
    nz, n = rows.get("config.model.nz"), rows.get(f"{split}.n_sentences")
    if nz is None or n is None:
        return None
    noise = (nz.astype(float) / (2.0 * n.astype(float))).pow(0.5).dropna()
    return float(noise.median()) if not noise.empty else None


def verdict_table(rows: pd.DataFrame, panel: tuple[str, str], split: str, baseline: str, select: Sequence[str],
                  arms: Sequence[str], tid: str, where: Sequence[Condition] = ()) -> Table:
    """The page's first answer, one row per arm at its chosen setting: the verdict (collapsed in n of N seeds), the
    cost (ΔNLL and Δ−ELBO against the baseline, paired t-test) and the gain (KL, MI, AU, probe accuracy above the
    majority class), sorted by MI; the best choice (no collapsed seed, lowest NLL) marked."""
    mi = verdict_mi(rows, split)  # the paired estimator where the rows have it: He et al.'s is noise at this N
    costs, gains_shown = verdict_costs(), [mi if n == "mi" else n for n in verdict_gains()]
    best = tables.best_per_technique(rows, baseline, select, split, costs + gains_shown, costs, arms, where)
    gains = probe_gain(rows, split)
    if not best.empty:
        chosen = rows.assign(_gain=gains).merge(best[["arm", "settings"]], on=["arm", "settings"])
        best["probe_gain"] = best["arm"].map(chosen.groupby("arm")["_gain"].mean())
        best = best.sort_values([f"{mi}.mean", "au.mean"], ascending=False, kind="stable", na_position="last")
        best = best.reset_index(drop=True)
        clean = best[(best["collapsed_seeds"] == 0) & (best["seeds"].map(len) > 0) & best["nll.mean"].notna()
                     & ~best["no_latent"].astype(bool)]  # a language model is a reference, not a choice
        top = clean["nll.mean"].idxmin() if not clean.empty else -1
        best["best_choice"] = best.index == top
        if top != -1:  # arms whose NLL cannot be told from the lowest share the mark: no winner within noise
            for i, r in clean.iterrows():
                gap_se = math.hypot(_num(r["nll.se"]), _num(best.loc[top, "nll.se"]))
                if i != top and significance.within_noise(r["nll.mean"] - best.loc[top, "nll.mean"], gap_se):
                    best.loc[i, "best_choice"] = True
    has_probes = not best.empty and best["probe_gain"].notna().any()
    cols = [Col("arm", "★: the best choice — no collapsed seed, and the lowest mean NLL among such arms (a model "
                "without a latent, such as a language model, is a reference, never the choice); every such "
                "arm whose NLL is within noise of it (2 combined standard errors) shares the ★"),
            Col("collapsed", f"seeds whose {split} AU = 0 or KL < {COLLAPSE_KL} nats, of the seeds run", True)]
    cols += [Col(f"Δ{metric(n).label} (cost)",
                 f"Paired difference {split}.{n}: arm − {baseline} (each at its chosen "
                 f"setting) over the seeds both have: mean ± std; ≈: within noise (|Δ| < 2 standard errors, combining "
                 f"the seed spread and the rows' measurement errors); otherwise * p < 0.05, ** p < 0.01, *** p < "
                 f"0.001 (two-sided paired t-test; hover a cell for SE, t, p and n). Positive: worse than {baseline}.",
                 True)
             for n in costs]
    cols += [metric_col(metric(n), split) for n in gains_shown]
    if has_probes:
        cols.append(Col("probe gain", "Mean over the corpus's ground-truth factors of the linear probe's accuracy "
                        "minus the majority-class accuracy (0: z tells the probe nothing).", True))
    out_rows, classes = [], []
    for _, r in best.iterrows():
        n, k = len(r["seeds"]), int(r["collapsed_seeds"])
        star = "★ " if r["best_choice"] else ""
        cells = [Cell(star + r["arm"], sort=r["arm"], bold=bool(r["best_choice"])),
                 Cell("no latent" if r.get("no_latent") else f"{k} of {n}", sort=k / max(n, 1),
                      cls="flag" if k else "")]
        for name in costs:
            if r["arm"] == baseline:
                cells.append(Cell("(baseline)", sort=math.nan))
                continue
            mean, std, p = _num(r[f"d.{name}.mean"]), _num(r[f"d.{name}.std"]), _num(r[f"d.{name}.p"])
            m = metric(name)
            text = "–" if math.isnan(mean) else (("+" if mean > 0 else "") + m.fmt(mean)
                                                 + ("" if math.isnan(std) else f" ± {m.fmt(std)}"))
            se = _num(r.get(f"d.{name}.se", math.nan))
            cells.append(Cell(f"{text} {r[f'd.{name}.marker']}".strip(), sort=mean,
                              cls="within-noise" if r.get(f"d.{name}.within_noise") else "",
                              title=f"n = {int(r[f'd.{name}.n'])}" + ("" if math.isnan(se) else f", SE = {se:.3g}")
                              + ("" if math.isnan(p) else f", t = {_num(r[f'd.{name}.t']):.3g}, p = {p:.3g}")))
        for name in gains_shown:
            mean, se = _num(r[f"{name}.mean"]), _num(r.get(f"{name}.se", math.nan))
            interval = "" if math.isnan(se) or math.isnan(mean) else f" ± {metric(name).fmt(2 * se)}"
            cells.append(Cell(metric(name).fmt(mean) + interval, sort=mean,
                              title="" if not interval else "± 2 standard errors (seed spread and measurement)"))
        if has_probes:
            gain = _num(r["probe_gain"])
            cells.append(Cell("–" if math.isnan(gain) else f"{gain:+.3f}", sort=gain))
        out_rows.append(cells)
        classes.append("best-choice" if r["best_choice"] else "collapsed" if k == n and n else "")
    chosen = ("at its setting chosen on validation (“Best per technique” below)" if best["select"].notna().any()
              else "at its one setting (no validation metrics: an arm of several settings is left out)")
    notes = [f"Each arm {chosen}; the {split} split, means over seeds; sorted by MI (the information z carries), "
             "then AU. KL, MI and AU carry ± 2 standard errors where the rows record them (the seed spread and each "
             "row's measurement error: over sentences, MI and AU by a bootstrap; ablate.metrics.uncertainty)."]
    if not best.empty and not best["best_choice"].any():
        notes.append("No best choice: every arm collapsed in at least one seed.")
    single = [] if best.empty else [r["arm"] for _, r in best.iterrows() if len(r["seeds"]) == 1]
    if single:
        which = "Every arm has one seed" if len(single) == len(best) else f"{', '.join(single)}: one seed only"
        notes.append(f"{which}: its ± is the measurement error alone, not the spread of training runs, often "
                     "larger (the same seed moves with the CPU kernels' rounding: README.md) — compare arms over "
                     "seeds.")
    noise = mi_noise(rows, split) if mi == "mi" else None
    if mi == "mi_paired":
        notes.append("MI is the paired estimator (both terms at the same draws: exactly 0 at collapse, its noise in "
                     "its ± interval); He et al.'s estimate, noisier by far at this size, is in the main table.")
    if noise is not None:
        notes.append(f"MI carries sampling noise of about ±{noise:.2f} nats here (√(nz / 2N): its first term is "
                     "analytic, its second sampled; ablate.metrics.estimators.mutual_information): a value within "
                     "it, negative ones included, reads as 0.")
    if baseline not in set(best["arm"]) if not best.empty else True:
        notes.append(f"No baseline arm '{baseline}' in this panel: no costs (set --baseline).")
    data = best.copy()
    if "seeds" in data:
        data["seeds"] = data["seeds"].map(lambda s: " ".join(map(str, s)))
    return Table(tid, f"Verdict, cost and gain — {panel[0]} × {panel[1]}", cols, out_rows, data, notes, classes)
