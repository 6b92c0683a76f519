"""`--tensorboard DIR` (issue 14): the event files of a run and of a sweep's cells, read back with TensorBoard's own
reader and compared with the run's curves file and result row. Skipped where the tensorboard package is absent
(`pip install 'ablate[tensorboard]'`); without it the flag is a one-line error before anything is written."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from ablate.cli.main import main
from malformed_inputs import STUDY

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
SETS = ["--set", "data.synthetic.n_train=128", "--set", "data.synthetic.n_valid=32", "--set",
        "data.synthetic.n_test=32", "--set", "train.epochs=2", "--set", "eval.iw_samples=3", "--set", "eval.probe=false",
        "--set", "train.batch_size=32"]


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="the tensorboard package is not installed (ablate[tensorboard])")
def test_a_run_writes_its_curves_and_metrics_as_event_files(tmp_path, capsys):
    assert main(["run", "-q", "--out", str(tmp_path / "r"), "--name", "first", "--tensorboard", str(tmp_path / "tb"),
                 *SETS]) == 0
    scalars = _scalars(tmp_path / "tb" / "first")
    curves = pd.read_parquet(tmp_path / "r" / "curves" / "first.curves.parquet")
    valid = curves[curves["split"] == "valid"]
    assert [s for s, _ in scalars["valid/nelbo"]] == valid["step"].tolist() == [4, 8]
    assert [v for _, v in scalars["valid/nelbo"]] == pytest.approx(valid["loss"].tolist(), rel=1e-6)
    train = curves[(curves["split"] == "train") & (curves["epoch"] == 0)]
    assert scalars["train/loss"][0][1] == pytest.approx(train["loss"].mean(), rel=1e-6)
    assert len(scalars["train_step/loss"]) == (curves["split"] == "train").sum()
    row = pd.read_parquet(tmp_path / "r" / "rows" / "first.parquet").iloc[0]
    for metric in ("test.nll", "test.kl", "test.mi", "test.au", "valid.nelbo"):
        assert scalars[f"final/{metric}"][0][1] == pytest.approx(float(row[metric]), rel=1e-6)


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="the tensorboard package is not installed (ablate[tensorboard])")
def test_a_sweep_writes_one_folder_per_cell_live_each_epoch(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert main(["sweep", str(study), "-q", "--out", str(tmp_path / "results"), "--tensorboard",
                 str(tmp_path / "tb")]) == 0
    cells = sorted((tmp_path / "tb" / "bad" / "vanilla").iterdir())
    assert len(cells) == 1 and cells[0].name.endswith(".a1")
    scalars = _scalars(cells[0])
    assert len(scalars["valid/nelbo"]) >= 1 and "final/test.nll" in scalars


def test_without_tensorboard_the_flag_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["run", "--out", str(tmp_path / "r"), "--tensorboard", str(tmp_path / "tb"), *SETS]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --tensorboard: the tensorboard package is not installed; pip install "
                   "'ablate[tensorboard]' (or pip install tensorboard)\n")
    assert not (tmp_path / "r").exists() and not (tmp_path / "tb").exists()


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="the tensorboard package is not installed (ablate[tensorboard])")
def test_the_final_metrics_sit_at_the_last_step_and_the_hparams_name_the_arm(tmp_path):
    """Issue 26.8: TensorBoard's HPARAMS tab, read back with its own plugin's parser, holds the cell's arm and
    technique fields with its final metrics; the final scalars are at the last training step, not 0."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    study = tmp_path / "s.yaml"
    study.write_text(STUDY + "  - name: fb\n    techniques: {free_bits: {lambda_per_dim: 0.25}}\n")
    assert main(["sweep", str(study), "-q", "--out", str(tmp_path / "results"), "--tensorboard",
                 str(tmp_path / "tb")]) == 0
    (cell,) = sorted((tmp_path / "tb" / "bad" / "fb").iterdir())
    row = pd.read_parquet(next((tmp_path / "results" / "bad" / "rows").glob("*.parquet"))).iloc[0]
    scalars = _scalars(cell)
    assert {step for step, _ in scalars["final/test.nll"]} == {int(row["train_steps"])} != {0}
    events = EventAccumulator(str(cell))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    values = {k: (v.string_value or v.number_value) for k, v in start.hparams.items()}
    assert values["arm"] == "fb" and values["study"] == "bad" and values["techniques"] == "free_bits"
    assert values["techniques.free_bits.lambda_per_dim"] == pytest.approx(0.25)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert {m.name.tag for m in experiment.metric_infos} >= {"final/test.kl", "final/test.mi", "final/test.au"}
