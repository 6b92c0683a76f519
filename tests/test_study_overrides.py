"""`--set KEY=VALUE` on studies (validate, sweep, status) and `--set techniques.<name>=null` (issue 14's friction
items; issue 12 found `validate STUDY --set` silently ignored)."""

from __future__ import annotations

import json

import pytest

from ablate.cli.main import main
from ablate.core.config_reading import load_config
from ablate.sweep.runner import run_sweep, status_text
from ablate.sweep.study import load_study
from malformed_inputs import STUDY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_set_applies_to_every_cell_after_the_arms(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY + "  - name: slow\n    train: {lr: 0.5, kl_weight: 0.5}\n")
    plain = load_study(path)
    changed = load_study(path, ["train.lr=0.01", "model.nz=3"])
    assert [c.config.train.lr for c in plain.cells] == [0.001, 0.5]
    assert [c.config.train.lr for c in changed.cells] == [0.01, 0.01]  # after the arm's own key
    assert {c.config.model.nz for c in changed.cells} == {3}
    assert {c.cell_id for c in plain.cells}.isdisjoint(c.cell_id for c in changed.cells)
    assert changed.hash != plain.hash and "with --set train.lr=0.01 --set model.nz=3" in changed.summary()
    swept = load_study(path, ["train.epochs=[1, 2]"])  # a list value sweeps, like a list in the file
    assert len(swept.cells) == 4
    with pytest.raises(Exception, match="same resolved config as arm 'vanilla'"):
        load_study(path, ["train.lr=0.01", "train.kl_weight=1.0"])  # the override made the arms one cell


def test_validate_study_with_set(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    assert main(["validate", str(path), "--set", "train.epochs=[1, 2]"]) == 0
    assert "2 cells" in capsys.readouterr().out
    assert main(["validate", str(path), "--set", "train.epochs=-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --set 'train.epochs=-1': train.epochs:")  # not the file


def test_a_bad_set_key_is_blamed_on_the_set_not_the_file(tmp_path, capsys):
    """Issue 26.10: the file is fine, the override is not; the first breaking override is named."""
    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    config = tmp_path / "c.yaml"
    config.write_text("train: {epochs: 1}\n")
    for target in (path, config):
        command = "validate" if target == path else "run"
        assert main([command, str(target), "--set", "train.lr=0.1", "--set", "train.lrr=1", "--out",
                     str(tmp_path / "o")][: 6 if command == "validate" else 8]) == 2
        assert capsys.readouterr().err.strip() == ("error: --set 'train.lrr=1': unknown key 'train.lrr'; did you "
                                                   "mean 'lr'?")
    path.write_text(STUDY.replace("epochs: 1", "epochz: 1"))  # the file is wrong: the file is named
    assert main(["validate", str(path), "--set", "train.lrr=1"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: line")


def test_sweep_records_its_overrides_and_status_reuses_them(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    out = tmp_path / "results"
    assert run_sweep(path, jobs=1, out=out, progress=False, overrides=["train.epochs=2"]) == 0
    folder = out / "bad"
    assert json.loads((folder / "study.json").read_text())["overrides"] == ["train.epochs=2"]
    rows = list((folder / "rows").glob("*.a1.parquet"))
    assert len(rows) == 1
    status = status_text(folder)  # the folder remembers its overrides: the cell counts as done
    assert "vanilla           1         1" in status and "with --set train.epochs=2 (as it was swept)" in status
    by_file = status_text(path, out=out)  # the file alone: counted as it was swept, and said so
    assert "vanilla           1         1" in by_file and "with --set train.epochs=2 (as it was swept)" in by_file
    other = status_text(path, out=out, overrides=["train.epochs=3"])  # other overrides: another cell
    assert "vanilla           1         0" in other and "counted with --set train.epochs=3\n" in other


def test_set_null_removes_a_technique(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("techniques: {free_bits: {lambda_per_dim: 0.5}, kl_annealing: {}}\n")
    assert set(load_config(config).techniques) == {"free_bits", "kl_annealing"}
    assert set(load_config(config, ["techniques.free_bits=null"]).techniques) == {"kl_annealing"}
    assert load_config(config, ["train.max_steps=null"]).train.max_steps is None  # other keys: null is null


def test_a_study_swept_with_set_is_not_reported_as_tampered(tmp_path):
    """Issue 26 (3): the recorded hash covers the --set overrides, the stored study.yaml does not; the report must
    hash them together (and show the overrides) — and still warn when study.yaml really changed."""
    from ablate.report.build import build_report

    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    out = tmp_path / "results"
    assert run_sweep(path, jobs=1, out=out, progress=False, overrides=["train.epochs=2"]) == 0
    page = build_report([out / "bad"], tmp_path / "rep").read_text()
    assert "no longer matches" not in page and "<code>--set train.epochs=2</code>" in page
    (out / "bad" / "study.yaml").write_text(STUDY + "# edited\n")
    assert "study.yaml no longer matches this hash" in build_report([out / "bad"], tmp_path / "rep2").read_text()


def test_quick_is_a_first_look_and_the_user_s_own_set_wins(tmp_path, capsys):
    import yaml

    assert main(["run", "--quick", "--set", "eval.iw_samples=7", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["train"]["max_steps"] == 200 and config["eval"]["max_sentences"] == 200
    assert config["data"]["max_train"] == 2000
    assert config["eval"]["iw_samples"] == 7
    path = tmp_path / "s.yaml"
    path.write_text(STUDY)
    study = load_study(path, ["data.max_train=2000", "train.max_steps=200", "eval.max_sentences=200",
                              "eval.iw_samples=50"])
    assert main(["sweep", str(path), "--quick", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    assert "with --set data.max_train=2000 --set train.max_steps=200 --set eval.max_sentences=200 --set " \
        "eval.iw_samples=50" in \
        capsys.readouterr().out and study.cells[0].config.train.max_steps == 200


@pytest.mark.parametrize("text,expected", [
    ("seed: 0\ntrain:\n  epochs: 1\n  lrr: 0.1\n", "line 4: unknown key 'train.lrr'; did you mean 'lr'?"),
    ("seed: 0\ntrain:\n  epochs: ten\n", "line 3: train.epochs: Input should be a valid integer"),
    ("techniques:\n  free_bits:\n    lamda: 1\n", "line 3: unknown key 'techniques.free_bits.lamda'"),
])
def test_a_run_config_refusal_names_its_line(tmp_path, capsys, text, expected):
    """Issue 26.9: README says a refusal names the file, the line and the key — for run configs too."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: {expected}")
