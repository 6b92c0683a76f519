"""How every figure of the report looks: the matplotlib style, one colour and marker per arm, the legend, readable
axis limits, and saving as PNG and SVG (atomically)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ablate.results.safe_files import atomic_target  # noqa: E402

RC = {
    "svg.hashsalt": "ablate-report",     # stable ids inside the SVG
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",        # shipped with matplotlib: the same glyphs on every machine
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "figure.dpi": 100,
}


DPI = 100


@dataclass(frozen=True)
class Figure_:
    key: str          # kind of plot
    title: str
    png: Path
    svg: Path
    caption: str


def slug(*parts: str) -> str:
    """A file or folder name from free text: letters, digits and `_.=-` only, no leading dot, never `..` (names
    come from result files, which are data: a study called '..' must not become a path out of --out)."""
    text = "__".join(str(p) for p in parts if p != "")
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.=-]+", "-", text))
    return text.strip("-.") or "plot"


def arm_palette(arms: Sequence[str]) -> dict[str, tuple]:
    """One colour per arm, fixed by the arm's position in the study, shared by every figure."""
    if len(arms) <= 10:
        colours = sns.color_palette("tab10", 10)
    else:   # tab20 pairs a dark and a light shade: take the ten dark ones first, then the light ones
        pairs = sns.color_palette("tab20", 20)
        colours = pairs[0::2] + pairs[1::2]
    return {arm: tuple(colours[i % len(colours)]) for i, arm in enumerate(arms)}


def style():
    return sns.axes_style("whitegrid", rc=RC)


def save(fig: Figure, stem: Path) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    with matplotlib.rc_context(RC), atomic_target(png) as png_tmp, atomic_target(svg) as svg_tmp:
        fig.savefig(png_tmp, dpi=DPI, metadata={"Software": None}, format="png")
        fig.set_layout_engine("none")    # keep the layout just computed: the SVG needs no second pass
        fig.savefig(svg_tmp, metadata={"Date": None, "Creator": None}, format="svg")
    return png, svg


def new_figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(width, height), layout="constrained")


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")  # arms at one point stay visible: shapes differ


def arm_marker(arm: str, palette: dict[str, tuple]) -> str:
    """One marker shape per arm, fixed by its position in the study (like its colour)."""
    return MARKERS[list(palette).index(arm) % len(MARKERS)] if arm in palette else "o"


def legend(fig: Figure, ax, arms: Sequence[str], palette: dict[str, tuple]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=arm_marker(a, palette), linestyle="", color=palette[a], label=a) for a in arms]
    if handles:
        fig.legend(handles=handles, loc="outside right upper", frameon=False, title="arm")


def readable_limits(ax: Any, values: pd.Series, axis: str, integer: bool = False) -> None:
    """Ticks a reader can use: integer ticks for counts (AU), and when every value is the same (AU of a collapsed
    study: all zeros) a visible span around it instead of matplotlib's ±0.05 with ticks like 0.045."""
    finite = values.astype(float).replace([np.inf, -np.inf], np.nan).dropna()
    target = ax.xaxis if axis == "x" else ax.yaxis
    if integer:
        target.set_major_locator(mticker.MaxNLocator(integer=True))
    if finite.empty or finite.max() > finite.min():
        return
    value = float(finite.iloc[0])
    half = 1.0 if integer else max(abs(value) * 0.1, 0.1)
    low = max(-0.5, value - half) if integer and value >= 0 else value - half  # a dot at 0 is not cut in half
    (ax.set_xlim if axis == "x" else ax.set_ylim)(low, value + half)


def step_axis(ax: Any) -> None:
    """A training-step axis whose labels fit a third of a page: at most five ticks, thousands as "50k" (a PTB run's
    131,600 steps printed as "75000100000125000" run together)."""
    ax.xaxis.set_major_locator(mticker.MaxNLocator(nbins=5, integer=True))
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(
        lambda value, _: f"{value / 1000:g}k" if abs(value) >= 1000 else f"{value:g}"))
