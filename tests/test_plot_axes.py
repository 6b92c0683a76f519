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


def _mi_au_drawn(rows, arms, tmp_path):
    """mi_au's figure as the report draws it: per panel, its x label and its tick labels' texts and extents."""
    import matplotlib.figure

    from ablate.report.plot_style import arm_palette
    from ablate.report.plots import mi_au

    seen = []
    original = matplotlib.figure.Figure.savefig

    def measure_then_save(self, *args, **kwargs):  # inside the report's style, as the files are drawn
        self.canvas.draw()
        for ax in self.axes:
            lo, hi = ax.get_xlim()
            labels = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
            bars = sorted(round(p.get_width(), 4) for p in ax.patches)
            seen.append((ax.get_xlabel(), [t.get_text() for t in labels], [t.get_window_extent() for t in labels],
                         bars))
        return original(self, *args, **kwargs)

    matplotlib.figure.Figure.savefig = measure_then_save
    try:
        mi_au(rows, arms, arm_palette(arms), tmp_path / "mi_au", "bnvae_ptb: ptb × lstm")
    finally:
        matplotlib.figure.Figure.savefig = original
    return seen


BNVAE_ARMS = ["kl_annealing", "bn_vae", "bn_vae_uniform_init", "bn_vae_no_anneal", "aggressive"]


def _bnvae_rows() -> pd.DataFrame:
    rows = _rows(BNVAE_ARMS, [0.005, 1.87, 1.71, 0.02, 0.077], [126.2, 125.5, 125.7, 126.6, 126.7])
    rows["test.mi"] = [-0.036, 1.088, 0.950, -0.035, 0.052]
    rows["test.au"] = [0.0, 16.0, 16.0, 0.0, 4.0]
    rows["test.mi_pool"] = 1000.0
    return rows


def test_the_mi_panel_labels_do_not_run_together(tmp_path):
    """One MI value (a single-arm study, or one arm with the paired estimator: a ±0.1 span around it) read
    "0.0000.0250.0500.075…" as one string in the browser: the MI axis now has at most five labels, well apart."""
    rows = _bnvae_rows().tail(1)
    rows["test.mi_paired"] = [0.0786]
    seen = _mi_au_drawn(rows, ["aggressive"], tmp_path)
    mi_label, mi_texts, _, _ = seen[0]
    assert mi_label.startswith("MI (paired)") and 2 <= len(mi_texts) <= 6, mi_texts
    for _, texts, boxes, _ in seen:  # every file drawn (PNG, SVG): apart by half a label at least, since a browser
        # sets the SVG's text in its own font, wider than matplotlib's measure (the 0.025 steps touched there)
        assert all(b.x0 - a.x1 >= 0.5 * max(a.width, b.width) for a, b in zip(boxes, boxes[1:])), texts


def test_rows_without_the_paired_mi_put_every_arm_on_he_et_al_s_estimator(tmp_path):
    """bnvae_ptb's four older rows have no paired MI: its MI panel showed the one newer arm's bar and none for
    BN-VAE (MI 1.09). With any row lacking it, every arm is drawn with He et al.'s estimator."""
    rows = _bnvae_rows()
    rows["test.mi_paired"] = [None, None, None, None, 0.0786]
    mi_label, _, _, bars = _mi_au_drawn(rows, BNVAE_ARMS, tmp_path)[0]
    assert not mi_label.startswith("MI (paired)"), mi_label
    assert bars == sorted([-0.036, 1.088, 0.95, -0.035, 0.052])


def test_a_language_model_row_does_not_take_the_paired_mi_from_the_others(tmp_path):
    """A model without a latent (nz 0: li2019_ptb's language model) has no paired MI to report; the VAEs beside it
    keep theirs."""
    rows = _bnvae_rows().head(2)
    rows["test.mi_paired"] = [None, 0.70]
    rows["config.model.nz"] = [0, 32]
    mi_label, _, _, bars = _mi_au_drawn(rows, BNVAE_ARMS[:2], tmp_path)[0]
    assert mi_label.startswith("MI (paired)") and bars == [0.7]
