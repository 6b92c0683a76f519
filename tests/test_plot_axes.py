"""Plots stay readable when every value is the same (an AU axis of zeros had ticks at ±0.045)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ablate.report.plot_style import readable_limits


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
    assert (lo, hi) == (-0.5, 1.0) and all(float(t).is_integer() for t in ticks)  # the dot at 0 is whole
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


def _rows(arms: list[str], kl: list[float], rec: list[float]) -> pd.DataFrame:
    n = len(kl)
    return pd.DataFrame({"arm": arms, "settings": ["—"] * n, "seed": range(n), "dataset": "d", "model": "m", "test.kl": kl, "test.rec": rec,
                         "test.nll": rec, "test.ppl": [800.0 + r for r in rec], "test.mi": [0.0] * n,
                         "test.au": [0.0] * n, "test.mi_pool": [60.0] * n})


def test_a_collapsed_study_gets_a_rate_axis_a_reader_can_use(tmp_path):
    """Issue 26.5: KL ≈ 1e-4 everywhere gave a span of 1e-4 whose tick labels ran into one another; points of
    several arms at one place hid each other."""
    import warnings

    from matplotlib.collections import PathCollection

    from ablate.report.plots import kl_vs_ppl, rate_distortion
    from ablate.report.plot_style import arm_palette

    arms = ["vanilla", "autoencoder", "free_bits"]
    rows = _rows(arms, [1e-4, 1.2e-4, 1.2e-4], [92.0241, 92.0236, 92.0236])
    palette = arm_palette(arms)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout warning either
        for plot in (rate_distortion, kl_vs_ppl):
            plot(rows, arms, palette, tmp_path / plot.__name__, "collapsed")
    fig = plt.figure()
    import matplotlib.figure

    for plot in (rate_distortion, kl_vs_ppl):
        made = {}
        original = matplotlib.figure.Figure.savefig

        def keep(self, *args, _made=made, **kwargs):
            _made["fig"] = self
            return original(self, *args, **kwargs)

        matplotlib.figure.Figure.savefig = keep
        try:
            plot(rows, arms, palette, tmp_path / f"again_{plot.__name__}", "collapsed")
        finally:
            matplotlib.figure.Figure.savefig = original
        ax = made["fig"].axes[0]
        lo, hi, ticks = _ticks(ax, "x")
        assert lo <= 0.0 and hi >= 1.0 and 2 <= len(ticks) <= 7, (plot.__name__, lo, hi, ticks)
        if plot is rate_distortion:
            y0, y1 = ax.get_ylim()
            assert y1 - y0 >= 1.0
        shapes = {tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in ax.collections
                  if isinstance(c, PathCollection) and len(c.get_offsets())}
        assert len(shapes) >= len(arms)  # one marker shape per arm
    plt.close(fig)


def test_a_single_arm_mi_au_figure_has_room_for_its_labels(tmp_path):
    import warnings

    from ablate.report.plots import mi_au
    from ablate.report.plot_style import arm_palette

    rows = _rows(["vanilla", "vanilla"], [0.0, 0.0], [92.0, 92.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        figure = mi_au(rows, ["vanilla"], arm_palette(["vanilla"]), tmp_path / "mi_au", "single arm")
    from PIL import Image

    width, height = Image.open(figure.png).size
    assert height >= 240 and width == 800


def test_iso_elbo_labels_never_touch(tmp_path):
    """The single-arm report of a free-bits study (KL 5–13, Rec 53.9–55.4) had '−ELBO=60' and '−ELBO=61.5'
    running into each other along the bottom edge: every pair of drawn labels' boxes is now apart."""
    import matplotlib.figure

    from ablate.report.plot_style import arm_palette
    from ablate.report.plots import rate_distortion

    rows = _rows(["free_bits"] * 6, [5.416, 6.309, 5.721, 12.738, 12.129, 12.565],
                 [55.399, 54.540, 54.835, 53.873, 55.141, 54.342])
    rows["settings"] = [f'{{"techniques.free_bits.lambda_per_dim": {lam}}}' for lam in (0.5, 0.5, 0.5, 1.0, 1.0, 1.0)]
    rows["seed"] = [0, 1, 2, 0, 1, 2]
    made = {}
    original = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        made["fig"] = self
        return original(self, *args, **kwargs)

    matplotlib.figure.Figure.savefig = keep
    try:
        rate_distortion(rows, ["free_bits"], arm_palette(["free_bits"]), tmp_path / "rd", "single arm")
    finally:
        matplotlib.figure.Figure.savefig = original
    fig = made["fig"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts if t.get_text().startswith("−ELBO=")]
    assert len(boxes) >= 2
    gap = 4  # pixels between two labels' boxes at least
    padded = [b.expanded((b.width + gap) / b.width, (b.height + gap) / b.height) for b in boxes]
    touching = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if padded[i].overlaps(padded[j])]
    assert not touching
    plt.close(fig)


def test_a_long_run_step_axis_has_few_short_labels_that_do_not_touch():
    """Training curves of a 100-epoch PTB run (131,600 steps) in a third of a 10-inch figure: matplotlib's own
    labels ("75000100000125000") ran together; step_axis gives at most five, in thousands, apart."""
    from ablate.report.plot_style import step_axis

    fig, ax = plt.subplots(figsize=(10 / 3, 1.6))
    ax.plot([0, 131_600], [1.0, 2.0])
    step_axis(ax)
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text() and ax.get_xlim()[0] <= t.get_position()[0]
              <= ax.get_xlim()[1]]
    assert 2 <= len(labels) <= 6 and all(t.get_text() == "0" or t.get_text().endswith("k") for t in labels)
    boxes = [t.get_window_extent() for t in labels]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))  # left to right, with a gap
    plt.close(fig)
