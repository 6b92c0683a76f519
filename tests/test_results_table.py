"""Results that query like a table: one declared type per column in every row, one consolidated results.parquet
per study, `ablate.load_results` and `ablate results` (issue 14)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

import ablate
from ablate.cli.main import main
from ablate.core.config_reading import build_config
from ablate.engine.run import base_row
from ablate.results.rows import write_row
from ablate.sweep.runner import run_sweep
from conftest import tiny_overrides
from malformed_inputs import STUDY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_column_has_one_type_whatever_the_value(tmp_path):
    """Unset (None) values are null in the column's declared type, never a string; an int in a float field is
    a float; eval.mi_pool ("dataset" or M) is always a string."""
    a = build_config(tiny_overrides(**{"eval.mi_pool": "dataset"}))
    b = build_config(tiny_overrides(**{"train.max_steps": 5, "eval.mi_pool": 32, "train.lr": 1}))
    for name, config in (("a", a), ("b", b)):
        row = {**base_row(config, name, {}), "status": "ok"}
        write_row(row, tmp_path / f"{name}.parquet")
    schemas = [pq.read_schema(tmp_path / f"{n}.parquet") for n in ("a", "b")]
    for column in ("config.train.max_steps", "config.eval.mi_pool", "config.train.lr", "config.data.path"):
        assert schemas[0].field(column).type == schemas[1].field(column).type, column
    assert str(schemas[0].field("config.train.max_steps").type) == "int64"
    assert str(schemas[0].field("config.eval.mi_pool").type) == "string"
    rows = ablate.load_results(tmp_path)
    assert rows["config.train.max_steps"].isna().sum() == 1 and rows["config.train.lr"].tolist() == [0.001, 1.0]
    assert sorted(rows["config.eval.mi_pool"]) == ["32", "dataset"]
    assert rows["config.data.path"].isna().all()  # null, not "None"


def test_a_sweep_keeps_one_results_table_and_the_cli_prints_it(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(STUDY + "  - name: diverges\n    train: {divergence_threshold: 1.0e-3}\n")
    out = tmp_path / "results"
    assert run_sweep(study, jobs=1, out=out, progress=False) == 1
    table = pd.read_parquet(out / "bad" / "results.parquet")
    assert sorted(table["status"]) == ["failed", "ok"] and set(table["arm"]) == {"vanilla", "diverges"}
    assert len(ablate.load_results(out / "bad")) == 2  # a study folder: its rows once (not the consolidated copy)
    capsys.readouterr()

    assert main(["results", str(study), "--results", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:6] == ["arm", "dataset", "model", "seed", "attempt", "status"]
    assert len(printed) == 2 and "vanilla" in printed[1]  # the ok attempt only
    assert main(["results", str(out / "bad"), "--all", "--format", "json", "--columns", "arm,status,test.*"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["arm"]: r["status"] for r in records} == {"vanilla": "ok", "diverges": "failed"}
    assert "test.nll" in records[0] and "cell_id" not in records[0]
    target = tmp_path / "rows.parquet"
    assert main(["results", str(out / "bad"), "--format", "parquet", "--output", str(target)]) == 0
    assert len(pd.read_parquet(target)) == 1
    assert main(["results", str(out / "bad"), "--columns", "test.nlll"]) == 2
    assert "did you mean 'test.nll'" in capsys.readouterr().err


def test_a_sweep_reports_each_epoch_to_its_optuna_trial(tmp_path):
    """Live curves: each epoch's validation −ELBO is the trial's intermediate value (optuna-dashboard draws it while
    the study runs), the named values are in `valid_curve`, and they equal the run's own curves file."""
    import optuna

    study = tmp_path / "s.yaml"
    study.write_text(STUDY.replace("train: {epochs: 1,", "train: {epochs: 3,"))
    out = tmp_path / "results"
    assert run_sweep(study, jobs=1, out=out, progress=False) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(out / "bad" / "ledger.journal")))
    trial = optuna.load_study(study_name="bad", storage=storage).trials[0]
    assert trial.user_attrs["arm"] == "vanilla" and trial.user_attrs["seed"] == 0
    curves = pd.read_parquet(next((out / "bad" / "curves").glob("*.curves.parquet")))
    valid = curves[curves["split"] == "valid"]
    assert sorted(trial.intermediate_values) == valid["epoch"].tolist() == [0, 1, 2]
    assert [trial.intermediate_values[e] for e in (0, 1, 2)] == pytest.approx(valid["loss"].tolist())
    assert [p["kl"] for p in trial.user_attrs["valid_curve"]] == pytest.approx(valid["kl"].tolist())
    assert [p["au"] for p in trial.user_attrs["valid_curve"]] == valid["au"].astype(int).tolist()
    assert trial.user_attrs["techniques"] == "none" and trial.user_attrs["dataset"] == "synthetic"
    train = curves[(curves["split"] == "train") & (curves["epoch"] == 2)]
    assert trial.user_attrs["valid_curve"][2]["beta"] == pytest.approx(train["beta"].iloc[-1])
    from datetime import datetime  # each point stamped when it was reported (`ablate status` times epochs by it)
    stamps = [datetime.fromisoformat(p["at"]) for p in trial.user_attrs["valid_curve"]]
    assert stamps == sorted(stamps) and all(t.tzinfo is not None for t in stamps)


def test_rows_curves_and_models_are_kept_apart_and_old_folders_still_read(tmp_path, capsys):
    """A glob over rows/ is only rows (pandas reads the folder, duckdb its '*.parquet'); a folder in the old layout
    (all three in runs/) is still read by the report and the loaders, and a sweep resumed on it moves its files
    into place without running anything again."""
    from ablate.report.inputs import load_study

    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    out = tmp_path / "results"
    assert run_sweep(study, jobs=1, out=out, progress=False) == 0
    folder = out / "bad"
    rows = pd.read_parquet(folder / "rows")
    assert len(rows) == len(list((folder / "rows").iterdir())) == 1 and rows["status"].tolist() == ["ok"]
    curves = pd.read_parquet(folder / "curves")
    assert len(curves) > 1 and set(curves["run_id"]) == set(rows["run_id"])
    assert [p.name.endswith(".model.pt") for p in (folder / "models").iterdir()] == [True]
    try:
        import duckdb
    except ImportError:
        duckdb = None
    if duckdb is not None:
        glob = str(folder / "rows" / "*.parquet")
        assert duckdb.sql(f"select count(*), min(status) from '{glob}'").fetchall() == [(1, "ok")]

    # the old layout: rows, curves and models side by side in runs/
    legacy = folder / "runs"
    legacy.mkdir()
    for part in ("rows", "curves", "models"):
        for path in (folder / part).iterdir():
            path.rename(legacy / path.name)
        (folder / part).rmdir()
    before = load_study(folder)
    assert len(before.ok) == 1 and not before.curves.empty
    assert len(ablate.load_results(folder)) == 1
    model = next(legacy.glob("*.model.pt"))
    assert main(["sample", str(model), "--json", "--prior", "1", "--reconstruct", "1"]) == 0
    capsys.readouterr()
    assert run_sweep(study, jobs=1, out=out, progress=False) == 0
    assert "moved 3 files of runs/ into rows/, curves/ and models/" in capsys.readouterr().err
    assert not legacy.exists() and len(pd.read_parquet(folder / "rows")) == 1  # moved, not run again
    assert pd.read_parquet(folder / "rows")["run_id"].tolist() == rows["run_id"].tolist()


def test_curves_are_written_compactly_and_read_back_exactly(tmp_path):
    """A curve's floats come from float32 tensors: zstd over split byte streams stores them smaller than the plain
    file, and every value (None for a missing one, NaN where a value is NaN) reads back as it was."""
    import math

    import pyarrow as pa

    from ablate.results.rows import CURVES_SCHEMA, write_atomic, write_curves

    points = [{"step": i, "epoch": i // 100, "phase": "vae", "split": "train", "beta": min(1.0, i / 500),
               "kl": float(pa.array([0.37 * math.sin(i)], pa.float32())[0].as_py()), "rec": 60.0 + (i % 7) / 8,
               "loss": 61.5, "mu_var": None, "au": None} for i in range(2000)]
    points.append({"step": 2000, "epoch": 20, "phase": "vae", "split": "valid", "beta": math.nan, "kl": 0.5,
                   "rec": 59.0, "loss": 59.5, "mu_var": 0.02, "au": 1.0})
    write_curves(points, "r1", tmp_path / "c.parquet")
    back = pq.read_table(tmp_path / "c.parquet")
    assert back.schema.equals(CURVES_SCHEMA) and back.num_rows == 2001
    for written, read in zip(points, back.to_pylist()):
        assert read["run_id"] == "r1"
        for key, value in written.items():
            assert read[key] == value or (isinstance(value, float) and math.isnan(value) and math.isnan(read[key]))
    assert pq.ParquetFile(tmp_path / "c.parquet").metadata.row_group(0).column(5).compression == "ZSTD"
    write_atomic(back, tmp_path / "plain.parquet")
    assert (tmp_path / "c.parquet").stat().st_size < (tmp_path / "plain.parquet").stat().st_size
