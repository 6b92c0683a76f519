"""ablate.report.tables against plain pandas on a hand-made study (tests/report_fixtures.py), and the paired
t-test against closed forms and table values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ablate.report import tables
from ablate.report import equal_rate
from ablate.report import significance
from ablate.report import cell_settings
from ablate.report.header import conventions
from ablate.report.table_model import latex_escape
from ablate.report.inputs import load_study
from ablate.report.schema import metrics_in
from ablate.metrics.schema import METRICS, metric
from ablate.results.rows import ok_and_failed
from report_fixtures import write_study

LAMBDA = "techniques.free_bits.lambda_per_dim"
WARMUP = "techniques.kl_annealing.warmup_epochs"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return load_study(write_study(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="module")
def raw(study):
    """The successful rows as pandas reads them, with the manifest's settings joined by cell id."""
    ok, _ = ok_and_failed(study.folder / "rows")
    return ok.merge(study.manifest[["cell_id", "settings"]], on="cell_id")


def test_load_keeps_latest_attempt_and_attaches_settings(study):
    assert len(study.ok) == 20 and len(study.failed) == 2
    li_seed1 = study.ok[(study.ok["arm"] == "li2019") & (study.ok["seed"] == 1)]
    assert li_seed1["attempt"].tolist() == [2]
    fb = study.ok[study.ok["arm"] == "free_bits"]
    assert set(fb["setting"]) == {"lambda_per_dim=0.25", "lambda_per_dim=0.5"}
    assert set(study.ok.loc[study.ok["arm"] == "vanilla", "setting"]) == {""}


def test_aggregate_means_std_n_match_pandas(study, raw):
    agg = tables.aggregate(study.ok, "test", arms=cell_settings.arm_order(study.manifest))
    names = [m.name for m in metrics_in(study.ok.columns, "test")]
    assert names[:8] == ["ppl", "ppl_word", "nelbo", "nll", "rec", "kl", "mi", "au"]
    assert "probe.sentiment" in names and "probe.topic" in names
    expected = raw.groupby(["dataset", "model", "arm", "settings"])
    assert len(agg) == expected.ngroups == 8
    for _, row in agg.iterrows():
        part = expected.get_group((row["dataset"], row["model"], row["arm"], row["settings"]))
        assert row["n_runs"] == len(part)
        assert row["seeds"] == sorted(part["seed"].tolist())
        for name in names:
            col = part[f"test.{name}"]
            assert row[f"{name}.mean"] == pytest.approx(col.mean(), rel=1e-12)
            assert row[f"{name}.n"] == col.count()
            if col.count() > 1:
                assert row[f"{name}.std"] == pytest.approx(col.std(ddof=1), rel=1e-12)
            else:
                assert math.isnan(row[f"{name}.std"])
    # partial cells: kl_annealing has one failed and one missing seed
    ka = agg[agg["arm"] == "kl_annealing"]
    assert ka["nll.n"].tolist() == [2, 2]
    # study order (the manifest's; baseline first), settings by value
    lstm = agg[agg["model"] == "lstm"]
    assert lstm["arm"].tolist() == ["vanilla", "free_bits", "free_bits", "kl_annealing", "kl_annealing", "li2019"]
    assert lstm["setting"].tolist()[1:5] == ["lambda_per_dim=0.25", "lambda_per_dim=0.5", "warmup_epochs=1",
                                             "warmup_epochs=2"]


def test_best_per_column_follows_direction(study):
    names = [m.name for m in metrics_in(study.ok.columns, "test")]
    agg = tables.aggregate(study.ok, "test")
    best = tables.best_mask(agg, names)
    for (dataset, model), part in agg.groupby(["dataset", "model"]):
        for name in names:
            m = metric(name)
            marked = set(part.index[best.loc[part.index, name]])
            if m.direction is None:
                assert not marked, f"{name} has no direction and must never be marked"
                continue
            values = part[f"{name}.mean"]
            target = values.idxmin() if m.direction == "min" else values.idxmax()
            assert marked == {target} or (len(marked) > 1 and target in marked), (model, name)
    assert METRICS["kl"].direction is None and METRICS["nll"].direction == "min" and METRICS["au"].direction == "max"


def test_collapse_flag(study):
    agg = tables.aggregate(study.ok, "test").set_index(["model", "arm", "setting"])
    assert agg.loc[("lstm", "vanilla", ""), "collapsed"]                      # AU = 0
    assert agg.loc[("lstm", "kl_annealing", "warmup_epochs=1"), "collapsed"]  # KL < 0.1
    assert not agg.loc[("lstm", "free_bits", "lambda_per_dim=0.5"), "collapsed"]
    assert not agg.loc[("lstm", "li2019", ""), "collapsed"]
    assert tables.collapsed(au=3.0, kl=0.05) and tables.collapsed(au=0.0, kl=5.0)
    assert not tables.collapsed(au=1.0, kl=0.1) and not tables.collapsed(au=math.nan, kl=math.nan)


def test_selection_on_validation_reported_on_test(study, raw):
    chosen = tables.select_settings(study.ok, ("valid.nll", "valid.nelbo"))
    assert set(chosen["select"]) == {"valid.nll"}
    best = tables.best_per_technique(study.ok, "vanilla", ("valid.nll",), "test").set_index(["model", "arm"])
    for (model, arm), part in raw.groupby(["model", "arm"]):
        means = part.groupby("settings")["valid.nll"].mean()
        want = means.idxmin()
        pick = chosen[(chosen["model"] == model) & (chosen["arm"] == arm)].iloc[0]
        assert pick["settings"] == want and pick["select.mean"] == pytest.approx(means.min())
        assert pick["n_settings"] == len(means)
        row = best.loc[(model, arm)]
        test_rows = part[part["settings"] == want]
        for name in ("nll", "kl", "mi", "au", "ppl"):
            assert row[f"{name}.mean"] == pytest.approx(test_rows[f"test.{name}"].mean(), rel=1e-12)
            assert row[f"{name}.n"] == len(test_rows)
    # the fixture makes lambda 0.5 better on validation on average
    fb = chosen[(chosen["model"] == "lstm") & (chosen["arm"] == "free_bits")].iloc[0]
    assert json.loads(fb["settings"]) == {LAMBDA: 0.5}
    # a metric to maximise picks the highest mean
    by_mi = tables.select_settings(study.ok, "valid.mi")
    for (model, arm), part in raw.groupby(["model", "arm"]):
        means = part.groupby("settings")["valid.mi"].mean()
        pick = by_mi[(by_mi["model"] == model) & (by_mi["arm"] == arm)].iloc[0]
        assert pick["settings"] == means.idxmax()
    # falls back to the next column when the first is absent
    assert set(tables.select_settings(study.ok.drop(columns="valid.nll"))["select"]) == {"valid.nelbo"}


def test_without_validation_metrics_an_arm_of_one_setting_is_its_own_choice(study, raw):
    """Runs that evaluate only test (eval.splits: [test]): nothing chooses among several settings, so those arms
    are left out; an arm of one setting is still reported, with its test means."""
    only_test = study.ok.drop(columns=[c for c in study.ok.columns if c.startswith("valid.")])
    chosen = tables.select_settings(only_test)
    one = raw.groupby(["model", "arm"])["settings"].nunique()
    assert sorted(zip(chosen["model"], chosen["arm"])) == sorted(one[one == 1].index)
    assert chosen["select"].isna().all() and (chosen["n_settings"] == 1).all()
    best = tables.best_per_technique(only_test, "vanilla", tables.DEFAULT_SELECT, "test").set_index(["model", "arm"])
    vanilla = raw[(raw["model"] == "lstm") & (raw["arm"] == "vanilla")]
    assert best.loc[("lstm", "vanilla"), "nll.mean"] == pytest.approx(vanilla["test.nll"].mean(), rel=1e-12)


def _p_closed_form(t: float, df: int) -> float:
    """Two-sided Student-t p-values in closed form for df = 1 (Cauchy) and df = 2."""
    t = abs(t)
    if df == 1:
        return 1.0 - 2.0 / math.pi * math.atan(t)
    if df == 2:
        return 1.0 - t / math.sqrt(2.0 + t * t)
    raise ValueError(df)


def test_paired_differences_against_baseline(study, raw):
    best = tables.best_per_technique(study.ok, "vanilla", ("valid.nll",), "test", deltas=("nll", "kl", "mi", "au"))
    chosen = tables.select_settings(study.ok, "valid.nll")
    checked = 0
    for _, row in best.iterrows():
        if row["arm"] == "vanilla":
            assert row["d.kl.n"] == 0 and math.isnan(row["d.kl.mean"]) and row["d.kl.marker"] == ""
            continue
        panel = raw[raw["model"] == row["model"]]
        base_settings = chosen[(chosen["model"] == row["model"]) & (chosen["arm"] == "vanilla")]["settings"].iloc[0]
        a = panel[(panel["arm"] == row["arm"]) & (panel["settings"] == row["settings"])]
        b = panel[(panel["arm"] == "vanilla") & (panel["settings"] == base_settings)]
        paired = a.merge(b, on="seed", suffixes=("_a", "_b"))
        for name in ("nll", "kl", "mi", "au"):
            d = paired[f"test.{name}_a"] - paired[f"test.{name}_b"]
            assert row[f"d.{name}.n"] == len(d) == len(set(a["seed"]) & set(b["seed"]))
            assert row[f"d.{name}.mean"] == pytest.approx(d.mean(), rel=1e-12, abs=1e-12)
            assert row[f"d.{name}.std"] == pytest.approx(d.std(ddof=1), rel=1e-12, abs=1e-12)
            if d.std(ddof=1) > 0:
                t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
                assert row[f"d.{name}.t"] == pytest.approx(t, rel=1e-12)
                assert row[f"d.{name}.p"] == pytest.approx(_p_closed_form(t, len(d) - 1), rel=1e-9)
                assert row[f"d.{name}.marker"] == ("≈" if row[f"d.{name}.within_noise"]
                                                   else significance.significance_marker(row[f"d.{name}.p"]))
                assert row[f"d.{name}.within_noise"] == (abs(d.mean()) < 2 * row[f"d.{name}.se"])
                assert row[f"d.{name}.se"] >= d.std(ddof=1) / math.sqrt(len(d))  # seed spread, plus measurement
            checked += 1
    assert checked == 4 * 4   # free_bits, kl_annealing, li2019 on lstm; free_bits on t5
    # the kl_annealing cells lack seed 2: paired over seeds 0, 1 only
    ka = best[(best["model"] == "lstm") & (best["arm"] == "kl_annealing")].iloc[0]
    assert ka["d.nll.n"] == 2
    # li2019 vs the collapsed vanilla: AU difference is constant-sign and large
    li = best[(best["model"] == "lstm") & (best["arm"] == "li2019")].iloc[0]
    assert li["d.au.mean"] > 5 and li["d.au.marker"] in ("*", "**", "***")
    assert li["collapsed_seeds"] == 0
    van = best[(best["model"] == "lstm") & (best["arm"] == "vanilla")].iloc[0]
    assert van["collapsed_seeds"] == 3 and tables.verdict(3, 3) == "collapsed"


def test_baseline_is_configurable(study):
    best = tables.best_per_technique(study.ok, "li2019", "valid.nll", "test")
    lstm = best[best["model"] == "lstm"].set_index("arm")
    assert lstm.loc["vanilla", "d.au.mean"] < 0 and lstm.loc["li2019", "d.au.n"] == 0
    t5 = best[best["model"] == "t5"]        # no li2019 there: no differences
    assert (t5["d.au.n"] == 0).all()


def test_coverage_missing_and_failures(study):
    cov = tables.coverage(study.manifest, study.ok, study.failed).set_index(["model", "arm"])
    assert cov.loc[("lstm", "kl_annealing"), ["expected", "succeeded", "failed", "missing"]].tolist() == [6, 4, 1, 1]
    assert cov.loc[("lstm", "li2019"), ["expected", "succeeded", "failed", "missing"]].tolist() == [3, 3, 0, 0]
    assert cov.loc[("t5", "free_bits"), ["expected", "succeeded", "failed", "missing"]].tolist() == [2, 2, 0, 0]
    totals = tables.coverage_total(cov.reset_index())
    assert (totals["expected"], totals["succeeded"], totals["failed"], totals["missing"]) == (22, 20, 1, 1)
    miss = tables.missing_cells(study.manifest, study.ok, study.failed)
    assert miss[["arm", "setting", "seed", "status"]].values.tolist() == [
        ["kl_annealing", "warmup_epochs=1", 2, "missing"], ["kl_annealing", "warmup_epochs=2", 2, "failed"]]
    fails = tables.failures(study.failed, study.ok)
    assert sorted(zip(fails["arm"], fails["recovered"])) == [("kl_annealing", False), ("li2019", True)]
    assert set(fails["error_class"]) == {"TrainingDiverged"}
    assert fails["error_message"].str.contains("nan").all()


def test_results_without_manifest(study):
    """Runs without a study manifest: settings inferred from the config columns that vary within an arm."""
    ok, failed = ok_and_failed(study.folder / "rows")
    ok = cell_settings.attach_settings(ok, None)
    fb = ok[(ok["arm"] == "free_bits") & (ok["model"] == "lstm")]
    assert sorted(set(fb["setting"])) == ["lambda_per_dim=0.25", "lambda_per_dim=0.5"]
    assert set(ok.loc[ok["arm"] == "vanilla", "setting"]) == {""}
    cov = tables.coverage(None, ok, cell_settings.attach_settings(failed, None))
    assert cov["expected"].isna().all() and cov["missing"].isna().all()
    assert cov.set_index(["model", "arm"]).loc[("lstm", "kl_annealing"), "failed"] == 1


def test_setting_labels():
    assert cell_settings.setting_label({}) == ""
    assert cell_settings.setting_label({"train.lr": 0.001, LAMBDA: 0.25}) == "lambda_per_dim=0.25, lr=0.001"
    clash = {"model.dropout": 0.1, "train.dropout": 0.2}
    assert cell_settings.setting_label(clash) == "model.dropout=0.1, train.dropout=0.2"


# ----------------------------------------------------------------------------- the t distribution


@pytest.mark.parametrize("a,b,x", [(1.0, 3.0, 0.2), (2.5, 1.0, 0.7), (0.5, 0.5, 0.3), (4.0, 4.0, 0.5),
                                   (30.0, 0.5, 0.95), (0.5, 12.0, 0.01)])
def test_betainc_identities(a, b, x):
    value = significance.betainc(a, b, x)
    assert value == pytest.approx(1.0 - significance.betainc(b, a, 1.0 - x), abs=1e-13)
    if a == 1.0:
        assert value == pytest.approx(1.0 - (1.0 - x) ** b, rel=1e-12)
    if b == 1.0:
        assert value == pytest.approx(x ** a, rel=1e-12)
    if a == b and x == 0.5:
        assert value == pytest.approx(0.5, rel=1e-12)
    if a == b == 0.5:   # the arcsine distribution
        assert value == pytest.approx(2.0 / math.pi * math.asin(math.sqrt(x)), rel=1e-12)


@pytest.mark.parametrize("t,df,p", [
    (12.706, 1, 0.05), (4.303, 2, 0.05), (3.182, 3, 0.05), (2.776, 4, 0.05), (2.228, 10, 0.05),
    (2.086, 20, 0.05), (9.925, 2, 0.01), (5.841, 3, 0.01), (3.169, 10, 0.01), (1.812, 10, 0.10),
    (0.0, 5, 1.0), (-2.228, 10, 0.05)])
def test_t_p_values_against_tables(t, df, p):
    """Critical values of Student's t (two-sided) as printed in statistics tables (3 decimals)."""
    assert significance.t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.0, 4.0, 25.0])
def test_t_p_values_closed_forms(t):
    assert significance.t_two_sided_p(t, 1) == pytest.approx(_p_closed_form(t, 1), rel=1e-12)
    assert significance.t_two_sided_p(t, 2) == pytest.approx(_p_closed_form(t, 2), rel=1e-12)
    # large df: the normal distribution, P(|Z| > t) = erfc(t / sqrt 2)
    assert significance.t_two_sided_p(t, 1e7) == pytest.approx(math.erfc(t / math.sqrt(2.0)), rel=1e-4, abs=1e-12)


def test_paired_t_test_values_and_edge_cases():
    x, y = [1.0, 2.0, 4.0], [0.5, 1.0, 1.0]
    res = significance.paired_t_test(x, y)
    d = np.subtract(x, y)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert (res["n"], res["df"]) == (3, 2)
    assert res["t"] == pytest.approx(t) and res["p"] == pytest.approx(_p_closed_form(t, 2))
    assert res["p"] == pytest.approx(0.188497, abs=1e-6)          # scipy.stats.ttest_rel(x, y).pvalue
    one = significance.paired_t_test([1.0], [0.0])
    assert one["n"] == 1 and math.isnan(one["p"]) and significance.significance_marker(one["p"]) == ""
    const = significance.paired_t_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert const["std"] == 0.0 and const["p"] == 0.0 and significance.significance_marker(const["p"]) == "***"
    same = significance.paired_t_test([1.0, 2.0], [1.0, 2.0])
    assert same["p"] == 1.0 and significance.significance_marker(same["p"]) == ""
    assert [significance.significance_marker(p) for p in (0.0009, 0.009, 0.049, 0.05)] == ["***", "**", "*", ""]


def test_t_test_matches_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats", reason="scipy is optional; closed forms and tables cover this")
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10, 40):
        x, y = rng.normal(size=n), rng.normal(0.3, size=n)
        assert significance.paired_t_test(x, y)["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-9)


# ----------------------------------------------------------------------------- formatting helpers


def test_conventions_and_latex(study):
    rows = study.ok[study.ok["model"] == "lstm"]
    text = "; ".join(conventions(rows, "test"))
    assert "K = 100" in text and "M = 100" in text and "log M = 4.61" in text and "AU δ = 0.01" in text
    assert "PPL token unit = word, counting </s>, not counting <s>" in text and "MIXED" not in text
    mixed = "; ".join(conventions(study.ok, "test"))
    assert "token unit = subword, word (MIXED" in mixed
    assert latex_escape("a_b & 5% ± −1") == r"a\_b \& 5\% $\pm$ $-$1"


def test_manifest_labels_name_the_rows_of_its_cells(study):
    """A study may label a seq2seq model 't5'; rows written with the config's name take the manifest's label."""
    ok, _ = ok_and_failed(study.folder / "rows")
    renamed = ok.copy()
    renamed["model"] = "seq2seq"
    manifest = study.manifest.copy()
    first = renamed["cell_id"].iloc[0]
    manifest.loc[manifest["cell_id"] == first, "model"] = "t5"
    out = cell_settings.attach_settings(renamed, manifest)
    assert out.loc[out["cell_id"] == first, "model"].tolist() == ["t5"]
    expected = ok.set_index("cell_id")["model"].drop(first)
    assert out.set_index("cell_id")["model"].drop(first).to_dict() == expected.to_dict()
    stray = renamed.assign(cell_id="not-in-manifest")  # rows of cells the manifest does not list keep their own
    assert set(cell_settings.attach_settings(stray, manifest)["model"]) == {"seq2seq"}


def test_the_verdict_table_against_plain_pandas(study, raw):
    """Verdict (collapsed seeds), cost (paired ΔNLL, Δ−ELBO against vanilla), gain (MI, probe accuracy above the
    majority class), sorted by MI, and the best choice: no collapsed seed and the lowest NLL."""
    from ablate.report.verdict_table import verdict_table

    rows = study.ok[(study.ok["model"] == "lstm")]
    table = verdict_table(rows, ("synthetic", "lstm"), "test", "vanilla", tables.DEFAULT_SELECT,
                          cell_settings.arm_order(rows), "v")
    data = table.data.set_index("arm")
    assert list(table.data["arm"]) == list(table.data.sort_values("mi.mean", ascending=False)["arm"])
    lstm = raw[raw["model"] == "lstm"]
    chosen = {arm: lstm[lstm["arm"] == arm].groupby("settings")["valid.nll"].mean().idxmin() for arm in data.index}
    picked = {arm: lstm[(lstm["arm"] == arm) & (lstm["settings"] == chosen[arm])].set_index("seed")
              for arm in data.index}
    base = picked["vanilla"]
    for arm in ("free_bits", "li2019"):
        mine = picked[arm]
        seeds = sorted(set(mine.index) & set(base.index))
        for name in ("nll", "nelbo"):
            diff = mine.loc[seeds, f"test.{name}"] - base.loc[seeds, f"test.{name}"]
            assert data.at[arm, f"d.{name}.mean"] == pytest.approx(diff.mean(), rel=1e-12)
        factors = [c.split(".", 2)[2] for c in mine.columns if c.startswith("test.probe.")]
        gain = np.mean([mine[f"test.probe.{f}"] - mine[f"test.probe_majority.{f}"] for f in factors], axis=0).mean()
        assert data.at[arm, "probe_gain"] == pytest.approx(gain, rel=1e-12)
        assert data.at[arm, "collapsed_seeds"] == sum((mine["test.au"] == 0) | (mine["test.kl"] < 0.1))
    clean = [a for a in data.index if data.at[a, "collapsed_seeds"] == 0]
    best = min(clean, key=lambda a: picked[a]["test.nll"].mean())
    assert data.at[best, "best_choice"]
    for arm in data.index:  # the others share the ★ exactly when their NLL is within noise of the best's
        gap = data.at[arm, "nll.mean"] - data.at[best, "nll.mean"]
        tie = arm in clean and arm != best and abs(gap) < 2 * math.hypot(data.at[arm, "nll.se"],
                                                                           data.at[best, "nll.se"])
        assert data.at[arm, "best_choice"] == (arm == best or tie)
    assert table.rows[list(data.index).index(best)][0].text == f"★ {best}"
    assert not any("one seed" in note for note in table.notes)
    fewer = rows[(rows["arm"] != "li2019") | (rows["seed"] == 0)]
    mixed = verdict_table(fewer, ("synthetic", "lstm"), "test", "vanilla", tables.DEFAULT_SELECT,
                          cell_settings.arm_order(fewer), "v")
    assert [note for note in mixed.notes if "one seed" in note] == [
        "li2019: one seed only: its ± is the measurement error alone, not the spread of training runs, often "
        "larger (the same seed moves with the CPU kernels' rounding: README.md) — compare arms over seeds."]


def test_single_runs_are_shown_by_name_with_the_settings_that_differ(tmp_path, capsys):
    """`ablate run --name` rows (no study, no manifest): each run is an arm named by its run name, and the report
    has one readable column per setting that differs between them (no internal keys)."""
    from ablate.core.config_reading import build_config
    from ablate.report.build import build_report
    from ablate.engine.run import execute
    from conftest import tiny_overrides

    base = {"train.epochs": 1, "eval.probe": False, "data.synthetic.n_train": 64, "data.synthetic.n_valid": 16,
            "data.synthetic.n_test": 16, "eval.iw_samples": 2}
    configs = {"plain": tiny_overrides(**base),
               "fb": tiny_overrides(**base, techniques={"free_bits": {"lambda_per_dim": 0.5}}),
               "fb_lr": tiny_overrides(**base, techniques={"free_bits": {"lambda_per_dim": 0.5}}, **{"train.lr": 0.003})}
    for name, overrides in configs.items():
        assert execute(build_config(overrides), tmp_path / "runs", run_id=name, progress=False, save_model=False).ok
    out = tmp_path / "report"
    build_report([tmp_path / "runs"], out)
    table = json.loads(next(out.rglob("*-settings-synthetic__lstm.json")).read_text())
    assert table["columns"] == ["run", "free_bits.lambda_per_dim", "free_bits.mode", "techniques", "train.lr"]
    by_run = {r["run"]: r for r in table["rows"]}
    assert set(by_run) == {"plain", "fb", "fb_lr"}
    assert by_run["plain"]["techniques"] == "none" and by_run["plain"]["free_bits.lambda_per_dim"] is None
    assert by_run["fb_lr"]["train.lr"] == 0.003 and by_run["fb"]["train.lr"] == 0.001
    verdict = json.loads(next(out.rglob("*-verdict-synthetic__lstm.json")).read_text())
    assert {r["arm"] for r in verdict["rows"]} == {"plain", "fb", "fb_lr"}
    assert any("MI is the paired estimator" in n for n in verdict["notes"])  # the verdict reads the low-noise MI
    assert any(n.startswith("Every arm has one seed: its ± is the measurement error alone") for n in verdict["notes"])
    assert "mi_paired.mean" in verdict["rows"][0]
    from ablate.cli.main import main

    assert main(["results", str(tmp_path / "runs"), "--format", "json", "--columns", "arm,config.train.lr"]) == 0
    printed = json.loads(capsys.readouterr().out)  # one row per run, shown by its name
    assert sorted((r["arm"], r["config.train.lr"]) for r in printed) == [("fb", 0.001), ("fb_lr", 0.003),
                                                                        ("plain", 0.001)]


def test_a_results_root_reports_its_own_runs_and_the_studies_inside(tmp_path, capsys):
    """`ablate report results` on a root that holds single runs (rows/) and study folders reports them all, as
    `ablate report` with no folder does (it used to stop at the root's own runs)."""
    import shutil

    from ablate.cli.main import main

    root = tmp_path / "results"
    study = write_study(root)
    (root / "rows").mkdir()
    shutil.copy(next((study / "rows").glob("*.parquet")), root / "rows" / "single.parquet")
    assert main(["report", str(root), "--out", str(tmp_path / "a")]) == 0
    given = capsys.readouterr().out
    assert main(["report", "--results", str(root), "--out", str(tmp_path / "b")]) == 0
    found = capsys.readouterr().out
    assert f"(2 studies: {root}, {study})" in given and given.split("(", 1)[1] == found.split("(", 1)[1]


def test_combined_standard_error_by_hand():
    # two seeds of Δ: 1.0 and 3.0 (std √2), measurement SEs 0.3 and 0.4: seed part 2/2, measurement 0.125/2
    assert significance.combined_se([1.0, 3.0], np.array([0.3, 0.4])) == pytest.approx(math.sqrt(1.0 + 0.0625))
    assert significance.combined_se([2.0], np.array([0.5])) == pytest.approx(0.5)  # one seed: the measurement alone
    assert math.isnan(significance.combined_se([2.0], np.array([math.nan])))  # nothing known
    assert significance.within_noise(0.9, 0.5) and not significance.within_noise(1.1, 0.5)
    assert not significance.within_noise(0.1, math.nan)


def _two_arm_rows(nll_b: float, se: float) -> pd.DataFrame:
    base = {"dataset": "d", "model": "m", "settings": "{}", "setting": "", "seed": 0, "valid.nll": 1.0, "test.kl": 3.0,
            "test.au": 8.0, "test.mi": 1.0, "test.nelbo": 101.0, "test.nelbo_se": se}
    return pd.DataFrame([{**base, "arm": "vanilla", "test.nll": 100.0, "test.nll_se": se, "cell_id": "a"},
                         {**base, "arm": "remedy", "test.nll": nll_b, "test.nll_se": se, "cell_id": "b"}])


@pytest.mark.parametrize("nll_b,se,noise", [(100.5, 0.4, True), (102.0, 0.4, False)])
def test_a_difference_within_noise_is_shown_as_such_and_decides_nothing(nll_b, se, noise):
    from ablate.report.verdict_table import verdict_table

    rows = _two_arm_rows(nll_b, se)
    best = tables.best_per_technique(rows, "vanilla", ("valid.nll",), "test", ["nll", "kl"], ["nll"])
    remedy = best.set_index("arm").loc["remedy"]
    assert remedy["d.nll.se"] == pytest.approx(math.hypot(se, se))  # one seed: both rows' measurement errors
    assert bool(remedy["d.nll.within_noise"]) is noise and (remedy["d.nll.marker"] == "≈") is noise
    table = verdict_table(rows, ("d", "m"), "test", "vanilla", ("valid.nll",), ["vanilla", "remedy"], "v")
    marked = table.data.set_index("arm")["best_choice"]
    assert bool(marked["vanilla"]) and bool(marked["remedy"]) is noise  # a tie within noise shares the ★


def test_remedies_at_equal_rate_by_hand():
    """Arm a: settings at KL 0.1 / 3 / 6 / 12 with Rec 100 / 98 / 97.5 / 99 — the KL 12 setting is beaten by the
    KL 6 one on both axes, so the front is the first three; at KL 2 Rec is 100 + (2 − 0.1)/(3 − 0.1)·(98 − 100);
    KL 10 lies past the front but within the settings' range. Arm b: KL 1 and 4."""
    rows = pd.DataFrame({"dataset": "d", "model": "m", "arm": ["a"] * 4 + ["b"] * 2,
                         "settings": ["1", "2", "3", "4", "1", "2"], "seed": 0,
                         "test.kl": [0.1, 3, 6, 12, 1, 4], "test.rec": [100, 98, 97.5, 99, 100, 96],
                         "test.nll": [100, 99, 99, 100, 100, 98], "test.au": [0, 4, 8, 16, 2, 6],
                         "test.rec_se": [0.5] * 6})
    out = equal_rate.matched_rate(rows, "test", names=("rec", "nll", "au")).set_index(["arm", "kl"])
    assert out.at[("a", 2.0), "rec"] == pytest.approx(100 + (2 - 0.1) / (3 - 0.1) * (98 - 100))
    assert out.at[("a", 5.0), "au"] == pytest.approx(4 + (5 - 3) / 3 * 4)
    assert out.at[("a", 2.0), "rec.se"] == pytest.approx(0.5)  # one seed: the measurement error
    assert out.at[("a", 10.0), "status"] == "beyond front"  # values then from the settings around KL 10: 6 and 12
    assert out.at[("a", 10.0), "rec"] == pytest.approx(97.5 + (10 - 6) / 6 * (99 - 97.5))
    assert out.at[("a", 10.0), "au"] == pytest.approx(8 + (10 - 6) / 6 * 8)
    assert out.at[("b", 2.0), "rec"] == pytest.approx(100 + (2 - 1) / 3 * (96 - 100))
    assert out.at[("b", 5.0), "status"] == "not reached" and out.at[("a", 5.0), "status"] == "front"


def test_a_selection_constraint_changes_the_setting_and_the_trial_picked():
    from ablate.report.build import study_selection
    from ablate.study.selection import Condition

    base = {"dataset": "d", "model": "m", "arm": "fb", "seed": 0, "test.nll": 1.0}
    rows = pd.DataFrame([{**base, "settings": '{"l": 0.1}', "setting": "l=0.1", "valid.nll": 100.0, "valid.au": 2},
                         {**base, "settings": '{"l": 1.0}', "setting": "l=1", "valid.nll": 101.0, "valid.au": 10}])
    where = (Condition("valid.au", ">=", 8.0),)
    assert tables.select_settings(rows, ("valid.nll",))["setting"].tolist() == ["l=0.1"]  # NLL alone: the weak one
    assert tables.select_settings(rows, ("valid.nll",), where=where)["setting"].tolist() == ["l=1"]
    assert tables.select_settings(rows, ("valid.nll",), where=(Condition("valid.au", ">", 50.0),)).empty
    exempt = tables.select_settings(rows, ("valid.nll",), where=(Condition("valid.au", ">", 50.0),), exempt="fb")
    assert exempt["setting"].tolist() == ["l=0.1"]  # the baseline keeps its own choice: costs are measured against it
    trials = rows.assign(search="fb/d/m/seed0", cell_id=["t1", "t2"])
    picked, _ = tables.best_search_trials(trials, ("valid.nll",))
    constrained, _ = tables.best_search_trials(trials, ("valid.nll",), where)
    assert picked["cell_id"].tolist() == ["t1"] and constrained["cell_id"].tolist() == ["t2"]
    by, parsed = study_selection('study: s\nselect: {by: valid.nll, where: "valid.au >= 8"}\n')
    assert by == ("valid.nll",) and parsed == where
    assert study_selection("study: s\n") == (None, ())


def test_a_language_model_is_neither_collapsed_nor_the_best_choice():
    """A model without a latent (model.nz 0, Li et al.'s LSTM-LM row) has AU 0 and KL 0 by construction: the report
    says 'no latent', leaves it out of the collapse summary, and never gives it the ★ even at the lowest NLL."""
    from ablate.report.build import summary
    from ablate.report.verdict_table import verdict_table

    rows = _two_arm_rows(101.0, 0.1).assign(**{"config.model.nz": 32})
    lm = {**rows.iloc[0].to_dict(), "arm": "lm", "test.nll": 99.0, "test.kl": 0.0, "test.au": 0.0, "test.mi": 0.0,
          "config.model.nz": 0, "cell_id": "c"}
    rows = pd.concat([rows, pd.DataFrame([lm])], ignore_index=True)
    assert list(tables.aggregate(rows).set_index("arm").loc[["lm", "vanilla"], "collapsed"]) == [False, False]
    assert tables.aggregate(rows).set_index("arm").loc["lm", "no_latent"]
    collapsed_lm = rows.assign(**{"config.model.nz": 32})  # the same numbers with a latent: collapsed
    assert tables.aggregate(collapsed_lm).set_index("arm").loc["lm", "collapsed"]
    table = verdict_table(rows, ("d", "m"), "test", "vanilla", ("valid.nll",), ["vanilla", "remedy", "lm"], "v")
    data = table.data.set_index("arm")
    assert not data.at["lm", "best_choice"] and data.at["vanilla", "best_choice"]
    best = tables.best_per_technique(rows, "vanilla", ("valid.nll",), "test", ["nll", "kl"], ["nll"])
    groups = summary("d", "m", best, ["vanilla", "remedy", "lm"])
    assert "lm" not in groups["collapsed"] + groups["no collapse"] + groups["partial"]
    assert tables.verdict(0, 1, no_latent=True) == "no latent"


def test_rates_no_arm_reaches_are_one_note_not_a_block_of_not_reached(tmp_path):
    """bnvae_ptb (every KL under 2) showed fifteen rows of 'not reached' and nothing else: a rate no arm reaches
    leaves the table for one note naming it and the largest KL seen; the files keep every row."""
    from test_plot_axes import _rows

    from ablate.report.study_tables import matched_rate_table

    rows = _rows(["a", "b", "b"], [0.005, 1.8, 6.0], [126.2, 125.5, 124.0])
    rows["seed"], rows["settings"] = [0, 0, 0], ["{}", '{"x": 1}', '{"x": 2}']
    table = matched_rate_table(rows, ("ptb", "lstm"), "test", ["a", "b"], "m")
    assert [(r[0].text, r[1].text) for r in table.rows] == [("2", "a"), ("2", "b"), ("5", "a"), ("5", "b")]
    assert table.notes[0].startswith("No arm reaches KL 10 (the largest test KL of any run: 6 nats, b)")
    assert len(table.data) == 2 * 3  # every arm at every rate, in the CSV/JSON/TeX
    collapsed = matched_rate_table(rows.head(2), ("ptb", "lstm"), "test", ["a", "b"], "m")
    assert collapsed.rows == [] and collapsed.notes[0].startswith("No arm reaches KL 2, 5, 10 (")


def test_a_language_model_row_does_not_make_k_mixed(study):
    """li2019_ptb's language model (nz 0) records K = 1, its NLL exact; beside VAEs at K = 500 the conventions read
    'K = 1, 500 (MIXED between rows: not comparable)'. K is the latent rows' alone; different K among those is
    still MIXED."""
    rows = study.ok[study.ok["model"] == "lstm"].copy()
    rows["config.model.nz"] = 16
    lm = rows.head(1).assign(**{"config.model.nz": 0, "eval.iw_samples": 1})
    text = "; ".join(conventions(pd.concat([rows, lm]), "test"))
    assert "K = 100; exact NLL for the rows without a latent" in text and "MIXED" not in text
    other = rows.head(1).assign(**{"eval.iw_samples": 500})
    assert "K = 100, 500 (MIXED" in "; ".join(conventions(pd.concat([rows, lm, other]), "test"))
