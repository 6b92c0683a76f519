"""Plots stay readable when every value is the same (an AU axis of zeros had ticks at ±0.045)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ablate.report.plots import readable_limits  # noqa: E402


def _ticks(ax, axis):
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return lo, hi, [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]


def test_all_zero_counts_get_integer_ticks_and_a_span():
    fig, ax = plt.subplots()
    ax.barh([0, 1], [0.0, 0.0])
    readable_limits(ax, pd.Series([0.0, 0.0, 0.0]), "x", integer=True)
    lo, hi, ticks = _ticks(ax, "x")
    assert (lo, hi) == (0.0, 1.0) and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


def test_a_constant_value_gets_a_visible_span_and_varied_values_are_left_alone():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [55.3, 55.3])
    readable_limits(ax, pd.Series([55.3, 55.3]), "y")
    assert ax.get_ylim() == pytest.approx((55.3 - 5.53, 55.3 + 5.53))
    ax.plot([0, 1], [1.0, 9.0])
    before = ax.get_ylim()
    readable_limits(ax, pd.Series([1.0, 9.0]), "y")
    assert ax.get_ylim() == before
    plt.close(fig)
