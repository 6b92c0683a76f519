"""Issue 27, items 4 and 6: result files are data (a row of the wrong schema is left out, named and counted, and
never copied in by collect), and what a config carries reaches neither a terminal nor a spreadsheet as code."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ablate.results.rows import check_row_file, read_results
from ablate.sweep.runner import run_sweep
from malformed_inputs import STUDY
from test_bad_input import run_cli


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("swept")
    study = tmp / "s.yaml"
    study.write_text(STUDY)
    assert run_sweep(study, jobs=1, out=tmp / "results", progress=False) == 0
    return study, tmp / "results" / "bad"


def _bad_copy(folder: Path, attempt: int = 9) -> Path:
    """An attempt file like ours but with test.nll as a string (as a hand edit or another tool might leave it)."""
    (good,) = sorted((folder / "rows").glob("*.a1.parquet"))
    table = pq.read_table(good)
    column = table.schema.get_field_index("test.nll")
    table = table.set_column(column, pa.field("test.nll", pa.string()), pa.array(["12.5"]))
    bad = good.with_name(good.name.replace(".a1.", f".a{attempt}."))
    pq.write_table(table, bad)
    return bad


def test_a_row_of_the_wrong_type_is_left_out_named_and_counted(swept, tmp_path, capsys):
    import shutil

    study, original = swept
    folder = tmp_path / "bad"
    shutil.copytree(original, folder)
    bad = _bad_copy(folder)
    assert "column test.nll is string, declared double" in check_row_file(bad)
    rows = read_results(folder)
    assert len(rows) == 1 and rows["test.nll"].dtype == float
    assert f"1 unreadable result file(s) left out (not a result row of the declared schema): {bad}" in \
        capsys.readouterr().err
    for command in (["results", str(folder)], ["report", str(folder), "--out", str(tmp_path / "rep")]):
        code, text = run_cli(command)
        assert code == 0 and str(bad) in text, (command, text)
    code, text = run_cli(["sweep", str(study), "--out", str(tmp_path)])  # resumes: the good row counts as done
    assert code == 0 and "1 already done" in text, text
    assert bad.exists()  # nothing is deleted


def test_collect_refuses_a_bad_row_and_a_symlink(swept, tmp_path, capsys):
    import shutil

    _, original = swept
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(original, here)
    (there / "rows").mkdir(parents=True)
    bad = _bad_copy(original, attempt=8)
    shutil.move(bad, there / "rows" / bad.name)
    planted = there / "rows" / bad.name.replace(".a8.", ".a7.")
    planted.symlink_to("/etc/hostname")
    capsys.readouterr()
    code, text = run_cli(["collect", str(here), str(there)])
    assert code == 0 and "0 attempt(s) collected, 0 already here, 2 file(s) refused" in text, text
    assert "is a symbolic link" in text and "column test.nll is string" in text
    assert sorted(p.name for p in (here / "rows").iterdir()) == sorted(p.name for p in (original / "rows").iterdir()
                                                                      if ".a8." not in p.name)
    assert len(read_results(here)) == 1


def _row_with_arm(folder: Path, arm: str) -> Path:
    (good,) = sorted((folder / "rows").glob("*.a1.parquet"))
    table = pq.read_table(good)
    table = table.set_column(table.schema.get_field_index("arm"), "arm", pa.array([arm]))
    planted = good.with_name(good.name.replace(".a1.", ".a5."))
    pq.write_table(table, planted)
    return planted


def test_text_from_a_row_reaches_neither_the_terminal_nor_a_spreadsheet_as_code(swept, tmp_path):
    import shutil

    _, original = swept
    folder = tmp_path / "bad"
    shutil.copytree(original, folder)
    _row_with_arm(folder, "=HYPERLINK(\"http://x\")\x1b]0;retitled\x07")
    code, text = run_cli(["results", str(folder)])
    assert code == 0 and "\x1b" not in text and "\x07" not in text and "\\x1b]0;retitled\\x07" in text
    out = tmp_path / "rows.csv"
    code, _ = run_cli(["results", str(folder), "--format", "csv", "--output", str(out)])
    assert code == 0
    cells = out.read_text().splitlines()[1].split(",")
    assert cells[0].startswith("\"'=HYPERLINK")
    code, _ = run_cli(["report", str(folder), "--out", str(tmp_path / "rep")])
    assert code == 0
    for csv in (tmp_path / "rep").rglob("*.csv"):
        assert not any(cell.startswith("=") for line in csv.read_text().splitlines() for cell in line.split(","))


def test_a_run_name_longer_than_a_file_name_is_refused_before_training(tmp_path):
    from malformed_inputs import TINY

    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    code, text = run_cli(["run", str(config), "--name", "n" * 300, "--out", str(tmp_path / "out")])
    assert code == 2 and text == "error: --name: 300 characters long; at most 100 (it names files)"
    assert not (tmp_path / "out").exists()


def test_the_report_never_writes_through_a_symlink_in_its_out_folder(swept, tmp_path):
    _, folder = swept
    out, elsewhere = tmp_path / "rep", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "bad").symlink_to(elsewhere)
    code, text = run_cli(["report", str(folder), "--out", str(out)])
    assert code == 2 and text == (f"error: --out {out}: {out / 'bad'} is a symbolic link; the report writes only "
                                  "into files and folders it creates: remove the link or choose another --out")
    assert not any(elsewhere.iterdir()) and not (out / "index.html").exists()


def test_a_resumed_sweep_deletes_nothing_through_a_symlinked_checkpoints_folder(swept, tmp_path):
    import shutil

    study, original = swept
    folder = tmp_path / "bad"
    shutil.copytree(original, folder)
    cell = next((folder / "rows").glob("*.a1.parquet")).name.split(".")[0]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / f"{cell}.pt").write_text("not ours")  # named like the checkpoint of a done cell
    (folder / "checkpoints").mkdir(exist_ok=True)
    shutil.rmtree(folder / "checkpoints")
    (folder / "checkpoints").symlink_to(precious)
    code, text = run_cli(["sweep", str(study), "--out", str(tmp_path)])
    assert code == 0, text
    assert (precious / f"{cell}.pt").read_text() == "not ours"


# ------------------------------------------------------------------ item 5: export folders are data


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from ablate.core.config_reading import build_config
    from ablate.engine.run import execute
    from conftest import tiny_overrides

    tmp = tmp_path_factory.mktemp("export")
    outcome = execute(build_config(tiny_overrides(**{"eval.splits": ["test"], "train.threads": 1})), tmp,
                      progress=False)
    assert outcome.ok
    code, text = run_cli(["export", str(outcome.result_path), "--out", str(tmp / "export")])
    assert code == 0, text
    return tmp / "export"


def _damaged(exported: Path, tmp_path: Path, damage) -> Path:
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    damage(folder)
    return folder


def _config_with(folder: Path, **model) -> None:
    import json

    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model)
    (folder / "config.json").write_text(json.dumps(config))


def _header_with(folder: Path, edit) -> None:
    import json

    path = folder / "model.safetensors"
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (length - len(text)) if len(text) <= length else b""
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])


def _first_tensor(header: dict) -> dict:
    return header[sorted(k for k in header if k != "__metadata__")[0]]


DAMAGES = {
    "config.json not JSON": (lambda f: (f / "config.json").write_text("{nope"), "not a readable JSON config"),
    "config.json a list": (lambda f: (f / "config.json").write_text("[1]"), "a run config is a JSON object"),
    "config.json an unknown key": (lambda f: _config_with(f, widthh=3), "widthh"),
    "config.json the widest model": (lambda f: _config_with(f, emb_dim=16384, enc_hidden=16384, dec_hidden=16384),
                                     # by hand: two LSTMs of 4·H·(E + H) = 2.147e9 weights each, two 901 × E
                                     # embeddings, H × 901 output: 4.34e9 fp32 values = 16.2 GiB
                                     "needs 16.2 GiB, this machine has 4.0 GiB free"),
    "header length past the end": (lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}"),
                                   "not a safetensors file (a header of"),
    "header not JSON": (lambda f: (f / "model.safetensors").write_bytes((4).to_bytes(8, "little") + b"{{{{"),
                        "its header is not JSON"),
    "tensor bytes out of the file": (lambda f: _header_with(f, lambda h: _first_tensor(h).update(
        data_offsets=[0, 10 ** 12])), "do not hold a"),
    "tensor of another shape": (lambda f: _header_with(f, lambda h: _first_tensor(h).update(
        shape=[_first_tensor(h)["shape"][0] * 0 + 1] * len(_first_tensor(h)["shape"]),
        data_offsets=[_first_tensor(h)["data_offsets"][0], _first_tensor(h)["data_offsets"][0] + 4])),
        "has shape"),
    "tokenizer record not JSON": (lambda f: (f / "tokenizer" / "ablate_tokenizer.json").write_text("{"), "not a tokenizer"),
    "tokenizer record without words": (lambda f: (f / "tokenizer" / "ablate_tokenizer.json").write_text('{"kind": "word"}'),
                                       "not a tokenizer"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_export_is_one_line_before_any_tensor_is_allocated(case, exported, tmp_path, monkeypatch):
    from ablate.engine import saved_models

    monkeypatch.setattr(saved_models, "available_memory", lambda: 4 * 2**30)  # as on a small machine
    damage, expected = DAMAGES[case]
    folder = _damaged(exported, tmp_path, damage)
    code, text = run_cli(["sample", str(folder), "--prior", "1"])
    assert code == 2 and len(text.splitlines()) == 1 and expected in text, text


def test_an_exported_model_file_is_readable_by_others(exported):
    import stat

    assert stat.S_IMODE((exported / "model.safetensors").stat().st_mode) & 0o044 == 0o044


def test_curves_of_an_older_ablate_are_read_and_an_unreadable_one_is_named(tmp_path, capsys):
    """A curves file written before the validation points carried mu_var and AU (li2019_ptb's language model) is
    read like a new one — the report had silently left its run out of the training-curves plot — and a file that
    is not a curves table is left out with a warning that names it."""
    from ablate.results.rows import load_curves, write_curves

    points = [{"step": s, "epoch": 0, "phase": "vae", "split": "train", "beta": 1.0, "kl": 0.0, "rec": 9.0 - s,
               "loss": 9.0 - s} for s in range(3)]
    (tmp_path / "curves").mkdir()
    write_curves(points, "new", tmp_path / "curves" / "new.curves.parquet")
    old = pa.Table.from_pylist([{"run_id": "old", **p} for p in points])  # the columns of the first schema only
    assert "au" not in old.column_names
    pq.write_table(old, tmp_path / "curves" / "old.curves.parquet")
    junk = tmp_path / "curves" / "junk.curves.parquet"
    junk.write_bytes(b"not parquet")
    curves = load_curves(tmp_path)
    assert sorted(curves["run_id"].unique()) == ["new", "old"]
    assert curves[curves["run_id"] == "old"]["rec"].tolist() == [9.0, 8.0, 7.0]
    assert curves[curves["run_id"] == "old"]["au"].isna().all()
    assert f"1 unreadable curves file(s) left out (not a curves table of the declared schema): {junk}" in \
        capsys.readouterr().err
