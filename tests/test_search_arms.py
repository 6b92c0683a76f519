"""Search arms (issue 15): an arm that declares an Optuna search instead of a grid gets the same trial budget as any
other; its trials are cells of the same ledger; a fixed sampler seed gives the same trials and the same best; two
objectives keep the Pareto front, which the report draws; the tables report each seed's best trial."""

from __future__ import annotations

import json
import re

import numpy as np
import optuna
import pandas as pd
import pytest

from ablate.cli.main import main
from ablate.report import tables
from ablate.sweep.ledger import Ledger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUDY = """\
study: budget
base:
  data: {name: synthetic, synthetic: {n_train: 120, n_valid: 30, n_test: 30}}
  model: {name: lstm, emb_dim: 8, enc_hidden: 16, dec_hidden: 16, nz: 3}
  train: {epochs: 1, batch_size: 32, device: cpu}
  eval: {iw_samples: 2, probe: false}
seeds: [0]
arms:
  - name: vanilla
    techniques: {}
  - name: free_bits
    techniques: {free_bits: {}}
    search:
      trials: 4
      seed: 7
      space:
        techniques.free_bits.lambda_per_dim: {low: 0.05, high: 2, log: true}
        train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
  - name: kl_constraint
    techniques: {kl_constraint: {}}
    search:
      sampler: random
      trials: 4
      objective: [valid.nelbo, valid.mi]
      space:
        techniques.kl_constraint.C: {low: 1, high: 20}
"""


def _search_params(folder, name="budget"):
    ledger = Ledger.open_existing(name, folder)
    out = {}
    for frozen in ledger.storage.get_all_studies():
        if ":search:" in frozen.study_name:
            study = optuna.load_study(study_name=frozen.study_name, storage=ledger.storage)
            out[frozen.study_name] = [(t.params, t.state.name, t.values) for t in study.trials]
    return out


def test_a_search_with_a_fixed_seed_gives_the_same_trials_and_best(tmp_path, monkeypatch):
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    runs = []
    for name in ("one", "two"):
        assert main(["sweep", str(study), "--out", str(tmp_path / name), "-q"]) == 0
        runs.append(_search_params(tmp_path / name / "budget"))
    assert runs[0] == runs[1] and len(runs[0]) == 2
    fb = runs[0]["budget:search:free_bits/synthetic/lstm/seed0"]
    assert len(fb) == 4 and all(state == "COMPLETE" for _, state, _ in fb)
    assert len({json.dumps(p, sort_keys=True) for p, _, _ in fb}) == 4  # four distinct points
    rows = pd.read_parquet(tmp_path / "one" / "budget" / "rows")
    assert sorted(rows["arm"].value_counts().items()) == [("free_bits", 4), ("kl_constraint", 4), ("vanilla", 1)]
    # each trial's value is its cell's validation NLL (one objective) or (−ELBO, MI) (two)
    for params, _, values in fb:
        lr = params["train.lr"]
        row = rows[(rows["arm"] == "free_bits") & np.isclose(rows["config.train.lr"], lr)].iloc[0]
        assert values == [pytest.approx(row["valid.nll"])]
    again = tmp_path / "one"  # a second sweep asks nothing more: the budget is spent
    assert main(["sweep", str(study), "--out", str(again), "-q"]) == 0
    assert len(pd.read_parquet(again / "budget" / "rows")) == 9


def test_the_report_shows_each_seeds_best_trial_and_the_pareto_front(tmp_path, monkeypatch):
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert main(["sweep", str(study), "--out", str(tmp_path / "r"), "-q"]) == 0
    assert main(["report", str(tmp_path / "r" / "budget"), "--out", str(tmp_path / "rep")]) == 0
    best = json.loads(next((tmp_path / "rep").rglob("*-best-synthetic__lstm.json")).read_text())
    chosen = {r["arm"]: r for r in best["rows"]}
    assert chosen["free_bits"]["setting"] == "best of 4 trials" and chosen["free_bits"]["seeds"] == "0"
    rows = pd.read_parquet(tmp_path / "r" / "budget" / "rows")
    fb = rows[rows["arm"] == "free_bits"]
    assert chosen["free_bits"]["nll.mean"] == pytest.approx(fb.loc[fb["valid.nll"].idxmin(), "test.nll"])
    kc = rows[rows["arm"] == "kl_constraint"]
    front = [i for i in kc.index if not any((kc.loc[j, "valid.nelbo"] <= kc.loc[i, "valid.nelbo"])
                                            and (kc.loc[j, "valid.mi"] >= kc.loc[i, "valid.mi"])
                                            and ((kc.loc[j, "valid.nelbo"] < kc.loc[i, "valid.nelbo"])
                                                 or (kc.loc[j, "valid.mi"] > kc.loc[i, "valid.mi"]))
                                            for j in kc.index)]  # brute force
    assert sorted(tables.pareto_front(kc, ["valid.nelbo", "valid.mi"]).pipe(lambda s: s[s].index)) == sorted(front)
    picked = kc.loc[front].sort_values("valid.nll").iloc[0]
    assert chosen["kl_constraint"]["nll.mean"] == pytest.approx(picked["test.nll"])
    assert (tmp_path / "rep" / "budget" / "plots" / "search__synthetic__lstm.png").is_file()
    assert "Search arms: their trials" in (tmp_path / "rep" / "index.html").read_text()


@pytest.mark.parametrize("search, message", [
    ("{trials: 3, space: {techniques.free_bits.lambda_per_dimm: {low: 0.1, high: 1}}}",
     "unknown key 'techniques.free_bits.lambda_per_dimm'; did you mean 'lambda_per_dim'?"),
    ("{trials: 3, objective: test.nll, space: {train.lr: {low: 0.001, high: 0.01}}}",
     "a search optimises a validation metric"),
    ("{trials: 3, space: {train.lr: {low: 0.01, high: 0.001}}}", "low < high"),
    ("{trials: 3, space: {train.lr: {low: 0, high: 0.1, log: true}}}", "a log range needs low > 0"),
    ("{trials: 3, samplr: tpe, space: {train.lr: {low: 0.001, high: 0.01}}}", "did you mean 'sampler'?"),
    ("{trials: 3, objective: valid.nlll, space: {train.lr: {low: 0.001, high: 0.01}}}", "did you mean 'nll'?"),
])
def test_a_bad_search_is_one_line_naming_the_key(tmp_path, capsys, search, message):
    study = tmp_path / "s.yaml"
    study.write_text(STUDY.split("  - name: free_bits")[0] + f"  - name: searched\n    techniques: {{free_bits: {{}}}}\n"
                     f"    search: {search}\n")
    assert main(["validate", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert re.search(r"s\.yaml: line 1[23]: ", err), err  # the arm's or its search's line


def test_a_search_arm_cannot_also_sweep_a_list(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(STUDY.replace("techniques: {free_bits: {}}", "techniques: {free_bits: {mode: [per_dim_example, "
                                                                  "per_dim_batch]}}"))
    assert main(["validate", str(study)]) == 2
    assert "cannot also sweep a list of values" in capsys.readouterr().err


def test_optunas_own_cli_reads_the_study(tmp_path, monkeypatch):
    """`optuna studies` lists the sweep and each search with named objectives; `optuna trials` shows a cell's arm,
    seed and settings as params, its labels as user attributes and its per-epoch values."""
    import shutil
    import subprocess

    import yaml

    if shutil.which("optuna") is None:
        pytest.skip("the optuna command is not on PATH")
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    url = f"sqlite:///{tmp_path}/s.db"
    study.write_text(STUDY + f"storage: {url}\n")
    assert main(["sweep", str(study), "--out", str(tmp_path / "r"), "-q"]) == 0
    listed = subprocess.run(["optuna", "studies", "--storage", url, "-f", "yaml"], capture_output=True, text=True,
                            timeout=120)
    studies = {s["name"]: s for s in yaml.safe_load(listed.stdout)}
    assert set(studies) == {"budget", "budget:search:free_bits/synthetic/lstm/seed0",
                            "budget:search:kl_constraint/synthetic/lstm/seed0"}
    assert studies["budget:search:kl_constraint/synthetic/lstm/seed0"]["direction"] in (
        ["MINIMIZE", "MAXIMIZE"], "('MINIMIZE', 'MAXIMIZE')")
    shown = subprocess.run(["optuna", "trials", "--study-name", "budget", "--storage", url, "-f", "yaml"],
                           capture_output=True, text=True, timeout=120)
    trials = yaml.safe_load(shown.stdout)
    searched = [t for t in trials if t["user_attrs"]["arm"] == "free_bits"]
    assert len(searched) == 4 and all("techniques.free_bits.lambda_per_dim" in t["params"] for t in searched)
    assert all(t["user_attrs"]["search"] == "free_bits/synthetic/lstm/seed0" for t in searched)
    assert all(t["user_attrs"]["techniques"] for t in trials) and all(t["state"] == "COMPLETE" for t in trials)
    import optuna

    loaded = optuna.load_study(study_name="budget", storage=url)
    assert loaded.metric_names == ["valid.nll"] and all(t.intermediate_values for t in loaded.trials)


def test_a_study_constraint_reaches_the_search_as_optuna_constraints(tmp_path, monkeypatch):
    """select: {where: ...} — each finished trial of a TPE search records its violations (≤ 0: met), which the
    sampler reads; the values are the conditions' shortfalls on the trial's own validation row."""
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    text = STUDY.split("  - name: kl_constraint")[0].replace("trials: 4", "trials: 3")
    study.write_text(text + 'select: {by: valid.nelbo, where: "valid.kl >= 1.0"}\n')
    assert main(["sweep", str(study), "--out", str(tmp_path), "-q"]) == 0
    ledger = Ledger.open_existing("budget", tmp_path / "budget")
    search = optuna.load_study(study_name="budget:search:free_bits/synthetic/lstm/seed0", storage=ledger.storage)
    rows = pd.read_parquet(tmp_path / "budget" / "rows")
    assert len(search.trials) == 3 and search.metric_names == ["valid.nelbo"]  # the study's rule is the objective
    for trial in search.trials:
        row = rows[rows["cell_id"] == trial.user_attrs["cell_id"]].iloc[0]
        expected = 0.0 if row["valid.kl"] >= 1.0 else 1.0 - row["valid.kl"]
        assert trial.user_attrs["constraints"] == [pytest.approx(expected)]
        assert trial.system_attrs["constraints:valid.kl >= 1"] == pytest.approx(expected)  # Optuna's own record
        assert trial.values == [pytest.approx(row["valid.nelbo"])]


def test_the_optuna_trials_carry_the_arm_as_a_param_and_the_collapse_signature(tmp_path):
    """Issue 26.8, read back with optuna.load_study: the arm is a categorical param (optuna-dashboard groups by it)
    over every arm of the study, the seed is not a param, and KL, MI and AU are on each trial."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from ablate.sweep.runner import run_sweep
    from malformed_inputs import STUDY

    study = tmp_path / "s.yaml"
    study.write_text(STUDY.replace("seeds: [0]", "seeds: [0, 1]")
                     + "  - name: fb\n    techniques: {free_bits: {lambda_per_dim: [0.1, 0.5]}}\n")
    assert run_sweep(study, jobs=1, out=tmp_path / "results", progress=False) == 0
    loaded = optuna.load_study(study_name="bad", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "results" / "bad" / "ledger.journal"))))
    trials = loaded.get_trials()
    assert len(trials) == 6
    for trial in trials:
        assert "seed" not in trial.params and trial.params["arm"] == trial.user_attrs["arm"]
        assert trial.distributions["arm"] == CategoricalDistribution(("fb", "vanilla"))
        assert all(isinstance(trial.user_attrs[f"test.{m}"], float) for m in ("kl", "mi", "au", "nll"))
    assert sorted(t.params.get("techniques.free_bits.lambda_per_dim", 0) for t in trials) == [0, 0, .1, .1, .5, .5]
