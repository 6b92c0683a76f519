"""The report's figures (matplotlib on the Agg canvas, seaborn styles and palettes), each as PNG and SVG.

Figures are built on `matplotlib.figure.Figure` objects, never through pyplot's global state, inside an rc
context that makes the files deterministic: `svg.hashsalt` is fixed, and neither file carries a date or the
software version. So regenerating a report from the same results gives byte-identical plot files.

Each function takes the prepared result rows (ablate.report.cell_settings.attach_settings) of one dataset × model
panel and writes `<stem>.png` and `<stem>.svg`, returning a `Figure_` (the files and a caption), or None when
there is nothing to draw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ablate.metrics.schema import metric
from ablate.report.equal_rate import rate_front, setting_points
from ablate.report.plot_style import (
    Figure_,
    arm_marker,
    legend,
    new_figure,
    readable_limits,
    save,
    step_axis,
    style,
)
from ablate.report.tables import has_latent, search_objectives, selection_metric

MAX_BINS = 120   # training curves are averaged into at most this many step bins per run


# ----------------------------------------------------------------------------- rate–distortion and KL vs PPL


def _scatter_runs_and_means(ax: Any, data: pd.DataFrame, arms: Sequence[str], palette: dict, x: str, y: str) -> None:
    """One faint point per run and one ringed point per setting mean, coloured and shaped by arm; arms drawn
    later are drawn smaller, so points of several arms at one place (collapsed arms, an autoencoder under free
    bits) show as nested shapes instead of hiding each other."""
    for i, arm in enumerate(arms):
        part = data[data["arm"] == arm]
        shrink = 1.0 / (1.0 + 0.35 * i)
        marker = arm_marker(arm, palette)
        ax.scatter(part[x], part[y], s=22 * shrink, color=palette[arm], alpha=0.55, linewidths=0, marker=marker,
                   zorder=3 + 0.01 * i)
        means = part.groupby("settings", sort=True)[[x, y]].mean()
        ax.scatter(means[x], means[y], s=90 * shrink, facecolor=palette[arm], edgecolor="black", linewidths=0.8,
                   marker=marker, zorder=4 + 0.01 * i)


def _rate_axis(ax: Any, kl: pd.Series) -> None:
    """A KL axis a reader can use when every KL is tiny (a collapsed study): from 0 to at least 1 nat, at most
    six ticks — not matplotlib's span of 1e-4 whose long tick labels run into one another."""
    ax.xaxis.set_major_locator(mticker.MaxNLocator(nbins=6))
    top = float(kl.max()) if len(kl) else 0.0
    if top < 1.0:
        ax.set_xlim(min(-0.05, float(kl.min()) - 0.05), 1.0)


def rate_distortion(rows: pd.DataFrame, arms: Sequence[str], palette: dict, stem: Path, title: str,
                    split: str = "test") -> Figure_ | None:
    """KL (rate) against Rec (distortion), one point per run, group means ringed; dashed iso-ELBO lines
    KL + Rec = c (every point on one has the same −ELBO)."""
    kl, rec = f"{split}.kl", f"{split}.rec"
    if rows.empty or kl not in rows or rec not in rows:
        return None
    data = rows.dropna(subset=[kl, rec])
    if data.empty:
        return None
    present = [a for a in arms if a in set(data["arm"])]
    with style():
        fig = new_figure(7.5, 4.6)
        ax = fig.add_subplot()
        _scatter_runs_and_means(ax, data, present, palette, kl, rec)
        points = setting_points(data, split, ["rec"])
        for arm in present:  # each arm's front: its settings not beaten on both KL and Rec
            front = rate_front(points[points["arm"] == arm])
            if len(front) > 1:
                ax.plot(front["kl"], front["rec"], color=palette[arm], linewidth=1.4, alpha=0.9, zorder=2)
        wide = _wide_range(data[kl])
        if wide:   # e.g. an autoencoder arm far to the right: a linear scale near 0, logarithmic beyond 1 nat
            ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        else:
            _rate_axis(ax, data[kl])
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        if y1 - y0 < 1.0:  # Rec nearly equal everywhere (collapsed arms): a 1-nat span keeps the iso-ELBO lines
            middle = (y0 + y1) / 2  # diagonal instead of a stack of near-vertical lines at KL = 0
            y0, y1 = middle - 0.5, middle + 0.5
        x0 = min(x0, 0.0)
        total = data[kl] + data[rec]
        levels = mticker.MaxNLocator(nbins=6).tick_values(total.min(), total.max())
        xs = np.concatenate([np.linspace(x0, min(x1, 1.0), 50), np.geomspace(1.0, x1, 200)]) if wide and x1 > 1 \
            else np.linspace(x0, x1, 2)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        labelled: list[np.ndarray] = []
        points_px = ax.transData.transform(np.column_stack([data[kl].to_numpy(float), data[rec].to_numpy(float)]))
        for c in levels:
            ax.plot(xs, c - xs, color="0.55", linestyle="--", linewidth=0.7, zorder=1)
            # label where the line leaves the plot through the bottom or the right edge, unless crowded
            x_at = min(x1, c - y0)
            y_at = c - x_at
            if not (x0 <= x_at <= x1 and y0 <= y_at <= y1):
                continue
            where = ax.transData.transform((x_at, y_at))
            if any(abs(where[0] - other[0]) < 95 and abs(where[1] - other[1]) < 16 for other in labelled):
                continue  # two labels' boxes (about 90 × 15 px, right-aligned at their anchors) would touch
            if len(points_px) and np.any((points_px[:, 0] > where[0] - 95) & (points_px[:, 0] < where[0] + 10)
                                         & (points_px[:, 1] > where[1] - 10) & (points_px[:, 1] < where[1] + 22)):
                continue  # a label (about 90 px left of and 15 px above its anchor) never covers a run's point
            labelled.append(where)
            ax.annotate(f"−ELBO={c:g}", (x_at, y_at), fontsize=7, color="0.4", ha="right", va="bottom",
                        xytext=(-2, 2), textcoords="offset points")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.yaxis.get_major_formatter().set_useOffset(False)
        ax.set_xlabel(f"KL (rate), {metric('kl').unit}" + (" (symlog scale)" if wide else ""))
        ax.set_ylabel(f"Rec (distortion), {metric('rec').unit}")
        ax.set_title(title)
        legend(fig, ax, present, palette)
    png, svg = save(fig, stem)
    return Figure_("rate_distortion", f"Rate–distortion ({split})", png, svg,
                   f"{split.capitalize()} KL against Rec: small points are runs (one per seed; every search trial "
                   f"too), ringed points the mean of each setting, solid lines each arm's front (its settings not "
                   f"beaten on both KL and Rec: the remedies at equal rate, table above). Dashed lines are iso-ELBO "
                   f"lines KL + Rec = const; lower-left is better, points on the Rec axis (KL ≈ 0) have collapsed.")


def _wide_range(kl: pd.Series) -> bool:
    """Whether KL spans orders of magnitude beyond 1 nat (then a symlog axis keeps the small values readable)."""
    top = float(kl.max())
    return top > 20.0 and top > 8.0 * max(float(kl.quantile(0.5)), 1.0)


def kl_vs_ppl(rows: pd.DataFrame, arms: Sequence[str], palette: dict, stem: Path, title: str,
              split: str = "test") -> Figure_ | None:
    kl, ppl = f"{split}.kl", f"{split}.ppl"
    if rows.empty or kl not in rows or ppl not in rows:
        return None
    data = rows.dropna(subset=[kl, ppl])
    if data.empty:
        return None
    present = [a for a in arms if a in set(data["arm"])]
    with style():
        fig = new_figure(7.5, 4.2)
        ax = fig.add_subplot()
        _scatter_runs_and_means(ax, data, present, palette, kl, ppl)
        if _wide_range(data[kl]):
            ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        else:
            _rate_axis(ax, data[kl])
        if data[ppl].min() > 0 and data[ppl].max() / data[ppl].min() > 10:
            ax.set_yscale("log")
        else:
            ax.yaxis.get_major_formatter().set_useOffset(False)
        ax.set_xlabel(f"KL, {metric('kl').unit}")
        ax.set_ylabel(f"PPL ({metric('ppl').unit})")
        ax.set_title(title)
        legend(fig, ax, present, palette)
    png, svg = save(fig, stem)
    return Figure_("kl_vs_ppl", f"KL vs PPL ({split})", png, svg,
                   f"{split.capitalize()} KL against perplexity (importance-weighted NLL): runs and setting means "
                   f"(ringed). A remedy that buys KL with a much worse PPL moves up and right.")


# ----------------------------------------------------------------------------- axes


# ----------------------------------------------------------------------------- MI and AU per arm


def mi_au(rows: pd.DataFrame, arms: Sequence[str], palette: dict, stem: Path, title: str,
          split: str = "test") -> Figure_ | None:
    """MI and AU of each arm's chosen setting: a bar at the mean over seeds, a dot per seed; MI's bound log M. MI
    is the paired estimator where every row with a latent has it (He et al.'s one-draw estimate is noise at small
    N), else He et al.'s for all (rows written before the paired estimator existed would otherwise show no bar)."""
    paired = f"{split}.mi_paired"
    mi = paired if paired in rows and rows[paired].notna().to_numpy()[has_latent(rows)].all() else f"{split}.mi"
    au = f"{split}.au"
    if rows.empty or (mi not in rows and au not in rows):
        return None
    present = [a for a in arms if a in set(rows["arm"])]
    if not present:
        return None
    cols = [c for c in (mi, au) if c in rows]
    with style():
        fig = new_figure(8.0, max(2.4, 1.2 + 0.32 * len(present)))  # one arm: still room for ticks and labels
        axes = fig.subplots(1, len(cols), sharey=True, squeeze=False)[0]
        ypos = {a: i for i, a in enumerate(present)}
        for ax, col in zip(axes, cols):
            for arm in present:
                values = rows.loc[rows["arm"] == arm, col].astype(float).dropna()
                if values.empty:
                    continue
                y = ypos[arm]
                ax.barh(y, values.mean(), color=palette[arm], alpha=0.45, height=0.7, zorder=2)
                ax.scatter(values, np.full(len(values), y), s=14, color=palette[arm], edgecolor="black",
                           linewidths=0.4, zorder=3)
            m = metric(col.split(".", 1)[1])
            ax.set_xlabel(f"{m.label} ({m.unit})")
            if col == mi and f"{split}.mi_pool" in rows:
                pools = rows[f"{split}.mi_pool"].dropna().unique()
                for pool in pools:
                    if pool > 1:
                        ax.axvline(math.log(pool), color="0.3", linestyle=":", linewidth=0.9)
                        label = ax.text(math.log(pool), 0.02, f"log M = {math.log(pool):.2f} ", fontsize=7,
                                        color="0.3", ha="right", va="bottom", rotation=90, clip_on=True,
                                        transform=ax.get_xaxis_transform())
                        label.set_in_layout(False)  # outside a narrow MI axis it must not squeeze the figure
            ax.axvline(0.0, color="0.2", linewidth=0.6)
            if col != au:  # half of an 8-inch figure: matplotlib's eight "0.025"-wide labels ran together
                ax.xaxis.set_major_locator(mticker.MaxNLocator(nbins=4))
            readable_limits(ax, rows[col], "x", integer=col == au)
        axes[0].set_yticks(range(len(present)), present)
        axes[0].set_ylim(len(present) - 0.5, -0.5)
        fig.suptitle(title)
    png, svg = save(fig, stem)
    return Figure_("mi_au", f"MI and AU per arm ({split})", png, svg,
                   "Mutual information I(x; z)" + (" (the paired estimator)" if mi == paired else "")
                   + " and active units of each arm at its chosen setting (see “Best per technique”): bars are means "
                   "over seeds, dots single seeds. The dotted line is MI's upper bound log M for the pool of M "
                   "sentences.")


# ----------------------------------------------------------------------------- search arms


def search_trials(trials: pd.DataFrame, arms: Sequence[str], palette: dict, stem: Path, title: str
                  ) -> Figure_ | None:
    """Each search arm's trials (one panel per arm): with one objective, its value per trial in the order they
    ran and the best so far per seed; with two or more, the first two against each other, the Pareto front ringed
    and joined (per seed)."""
    if trials.empty:
        return None
    present = [a for a in arms if a in set(trials["arm"])]
    if not present:
        return None
    with style():
        fig = new_figure(min(4.0 * len(present), 12.0) + 1.0, 3.2)
        axes = fig.subplots(1, len(present), squeeze=False)[0]
        for ax, arm in zip(axes, present):
            part = trials[trials["arm"] == arm]
            objectives = search_objectives(part, selection_metric(part))
            if not objectives:
                continue
            for _, seed_part in part.groupby("seed", sort=True):
                seed_part = seed_part.sort_values(["started_at", "cell_id"], kind="stable")
                values = seed_part[objectives[0]].astype(float)
                if len(objectives) == 1:
                    m = metric(objectives[0].split(".", 1)[1])
                    best = values.cummax() if m.direction == "max" else values.cummin()
                    steps = np.arange(1, len(values) + 1)
                    ax.scatter(steps, values, s=16, color=palette[arm], alpha=0.6, linewidths=0, zorder=3)
                    ax.step(steps, best, where="post", color=palette[arm], linewidth=1.2, zorder=2)
                    ax.set_xlabel("trial")
                    ax.set_ylabel(f"{objectives[0]} ({m.unit})")
                    readable_limits(ax, part[objectives[0]].astype(float), "y")
                else:
                    y = seed_part[objectives[1]].astype(float)
                    ax.scatter(values, y, s=16, color=palette[arm], alpha=0.5, linewidths=0, zorder=3)
                    front = seed_part[seed_part["pareto"].astype(bool)].sort_values(objectives[0])
                    ax.plot(front[objectives[0]], front[objectives[1]], color=palette[arm], linewidth=1.0, zorder=2)
                    ax.scatter(front[objectives[0]], front[objectives[1]], s=30, facecolor=palette[arm],
                               edgecolor="black", linewidths=0.8, zorder=4)
                    ax.set_xlabel(objectives[0])
                    ax.set_ylabel(objectives[1])
                    readable_limits(ax, part[objectives[0]].astype(float), "x")
                    readable_limits(ax, part[objectives[1]].astype(float), "y")
            ax.ticklabel_format(useOffset=False, style="plain")  # no "+9.698e1" offsets on close values
            ax.set_title(f"{arm} ({len(part)} trials)")
        fig.suptitle(title)
    png, svg = save(fig, stem)
    return Figure_("search", "Search arms: their trials", png, svg,
                   "Every trial of each search arm (validation split). One objective: its value per trial in the "
                   "order they ran and the best so far (a line per seed). Several: the first two objectives "
                   "against each other, the Pareto front ringed and joined. The tables report, per seed, the best "
                   "trial on the front by the selection rule.")


# ----------------------------------------------------------------------------- training curves


def _binned(curves: pd.DataFrame, width: int) -> pd.DataFrame:
    c = curves.assign(bin=(curves["step"] // width) * width)
    return c.groupby(["run_id", "bin"], sort=True)[["beta", "kl", "rec"]].mean().reset_index()


def training_curves(rows: pd.DataFrame, curves: pd.DataFrame, arms: Sequence[str], palette: dict, stem: Path,
                    title: str) -> Figure_ | None:
    """β, KL and Rec of the training steps, one row per arm (its chosen setting): the mean over seeds with a
    min–max band, steps averaged in bins; the pretraining phase shaded."""
    if rows.empty or curves.empty or "run_id" not in rows:
        return None
    train = curves[(curves["split"] == "train") & curves["run_id"].isin(set(rows["run_id"]))]
    if train.empty:
        return None
    run_arm = dict(zip(rows["run_id"], rows["arm"]))
    present = [a for a in arms if a in set(train["run_id"].map(run_arm))]
    width = max(1, int(math.ceil((train["step"].max() + 1) / MAX_BINS)))
    binned = _binned(train, width)
    binned["arm"] = binned["run_id"].map(run_arm)
    quantities = [("beta", "β"), ("kl", "KL (nats)"), ("rec", "Rec (nats)")]
    with style():
        fig = new_figure(10.0, 0.6 + 1.55 * len(present))
        axes = fig.subplots(len(present), 3, squeeze=False, sharex="row")
        for r, arm in enumerate(present):
            part = binned[binned["arm"] == arm]
            stats = part.groupby("bin", sort=True)[["beta", "kl", "rec"]].agg(["mean", "min", "max"])
            pre = train[(train["run_id"].map(run_arm) == arm) & (train["phase"] == "pretrain")]["step"]
            n_runs = part["run_id"].nunique()
            for c, (q, label) in enumerate(quantities):
                ax = axes[r, c]
                if not pre.empty:
                    ax.axvspan(pre.min(), pre.max() + 1, color="0.85", zorder=0, linewidth=0,
                               label="pretraining")
                x = stats.index.to_numpy() + width / 2.0
                ax.fill_between(x, stats[(q, "min")], stats[(q, "max")], color=palette[arm], alpha=0.25,
                                linewidth=0, zorder=1)
                ax.plot(x, stats[(q, "mean")], color=palette[arm], linewidth=1.2, zorder=2)
                if r == 0:
                    ax.set_title(label)
                if c == 0:
                    ax.set_ylabel(f"{arm}\n({n_runs} run{'s' if n_runs != 1 else ''})", fontsize=8)
                if r == len(present) - 1:
                    ax.set_xlabel("step")
                step_axis(ax)
                if q == "beta":
                    ax.set_ylim(-0.05, max(1.05, float(stats[(q, "max")].max()) + 0.05))
        fig.suptitle(title)
    png, svg = save(fig, stem)
    return Figure_("training_curves", "Training curves", png, svg,
                   f"Per training step (averaged over bins of {width} step{'s' if width != 1 else ''}): the KL "
                   f"weight β, KL and Rec of the training batches, for each arm at its chosen setting. Lines are "
                   f"means over seeds, bands span min–max over seeds; grey shading marks the pretraining phase "
                   f"(encoder pretraining, β = 0).")


# ----------------------------------------------------------------------------- sensitivity to swept settings


def _numeric(values: pd.Series) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.dropna())


def sensitivity(rows: pd.DataFrame, settings: pd.DataFrame, arm: str, key: str, names: Sequence[str],
                colour: tuple, stem: Path, title: str, split: str = "test") -> Figure_ | None:
    """Each metric against one swept setting of one arm: mean ± std over seeds per value; a line per
    combination of the arm's other swept settings."""
    mine = rows[rows["arm"] == arm]
    if mine.empty or key not in settings:
        return None
    values = settings.loc[mine.index, key]
    if values.dropna().map(json.dumps).nunique() < 2:
        return None
    others = [k for k in settings.columns if k != key and settings.loc[mine.index, k].notna().any()]
    other_label = (settings.loc[mine.index, others].apply(
        lambda r: ", ".join(f"{k.split('.')[-1]}={r[k]}" for k in others), axis=1) if others
        else pd.Series("", index=mine.index))
    names = [n for n in names if f"{split}.{n}" in mine]
    if not names:
        return None
    numeric = _numeric(values)
    order = sorted(values.dropna().unique(), key=lambda v: (float(v) if numeric else str(v)))
    xpos = {v: (float(v) if numeric else i) for i, v in enumerate(order)}
    groups = other_label.nunique()
    shades = [colour] if groups <= 1 else sns.dark_palette(colour, n_colors=groups + 1, reverse=True)[:groups]
    with style():
        fig = new_figure(2.3 * len(names) + 0.6, 2.6)
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names):
            m = metric(name)
            for i, (label, part) in enumerate(mine.groupby(other_label.loc[mine.index], sort=True)):
                v = settings.loc[part.index, key]
                stats = part.groupby(v.map(lambda x: xpos[x]))[f"{split}.{name}"].agg(["mean", "std"])
                ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", markersize=4,
                            capsize=2, linewidth=1.1, color=shades[i % len(shades)], label=label or None)
            if numeric and min(xpos.values()) > 0 and max(xpos.values()) / min(xpos.values()) >= 10:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(list(xpos.values()), [str(v) for v in order], rotation=30)
            readable_limits(ax, mine[f"{split}.{name}"], "y", integer=name == "au")
            ax.set_title(m.label)
            ax.set_xlabel(key.split(".")[-1])
        if others:
            fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False)
        fig.suptitle(title)
    png, svg = save(fig, stem)
    return Figure_("sensitivity", f"Sensitivity of {arm} to {key}", png, svg,
                   f"{split.capitalize()} metrics of arm '{arm}' against its swept setting '{key}': mean ± std over "
                   f"seeds" + (f", one line per value of the other swept settings ({', '.join(others)})."
                               if others else "."))
