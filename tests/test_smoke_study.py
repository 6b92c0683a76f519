"""The product end to end on the embedded corpus: `ablate sweep studies/smoke.yaml`, `ablate status`, then
`ablate report` on what the sweep wrote (CI runs this)."""

from __future__ import annotations

from pathlib import Path

from ablate.cli.main import main
from ablate.results.rows import ok_and_failed

REPO = Path(__file__).resolve().parents[1]


def test_smoke_sweep_then_report(tmp_path, capsys):
    study = REPO / "studies" / "smoke.yaml"
    assert main(["sweep", str(study), "--out", str(tmp_path / "results")]) == 0
    ok, failed = ok_and_failed(tmp_path / "results" / "smoke" / "rows")
    assert len(ok) == 5 and failed.empty
    assert set(ok["arm"]) == {"vanilla", "autoencoder", "free_bits", "li2019"}
    assert ok["cell_id"].is_unique

    # a second sweep finds nothing to do and duplicates nothing
    assert main(["sweep", str(study), "--out", str(tmp_path / "results")]) == 0
    again, _ = ok_and_failed(tmp_path / "results" / "smoke" / "rows")
    assert len(list((tmp_path / "results" / "smoke" / "rows").glob("*.a*.parquet"))) - len(
        list((tmp_path / "results" / "smoke" / "rows").glob("*.curves.parquet"))) == 5
    assert sorted(again["run_id"]) == sorted(ok["run_id"])

    assert main(["status", str(study), "--out", str(tmp_path / "results")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "results" / "smoke"), "--out", str(tmp_path / "reports")]) == 0
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "vanilla" in index and "free_bits" in index and "<img" in index
