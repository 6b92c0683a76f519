"""Issue 27, items 4 and 6: result files are data (a row of the wrong schema is left out, named and counted, and
never copied in by collect), and what a config carries reaches neither a terminal nor a spreadsheet as code."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ablate.results import check_row_file, read_results
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
