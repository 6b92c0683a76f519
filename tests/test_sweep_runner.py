"""The sweep end to end at tiny sizes: resume without duplicates, an injected NaN that fails one cell while the
rest complete, --fail-fast, a worker killed with SIGKILL mid-sweep, two concurrent workers on one journal, a
malformed study that writes nothing, and `ablate status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ablate.cli.main import main
from ablate.results.rows import ok_and_failed
from ablate.sweep.ledger import Ledger
from ablate.sweep.runner import run_sweep, status_text
from ablate.sweep.folder import write_study_files
from ablate.sweep.study import load_study

pytestmark = pytest.mark.slow

TINY = """\
base:
  data: {synthetic: {n_train: 120, n_valid: 40, n_test: 40}}
  model: {emb_dim: 16, enc_hidden: 32, dec_hidden: 32, nz: 4}
  train: {epochs: 1, batch_size: 32, device: cpu, threads: 1}
  eval: {iw_samples: 5, probe: false, splits: [test]}
"""


def make_study(tmp_path: Path, name: str, arms: str, seeds: str = "[0]", base: str = TINY) -> Path:
    text = f"study: {name}\n{base}seeds: {seeds}\narms:\n{textwrap.indent(textwrap.dedent(arms), '  ')}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def raw_rows(folder: Path) -> pd.DataFrame:
    paths = sorted(p for p in (folder / "rows").glob("*.parquet") if not p.name.endswith(".curves.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True) if paths else pd.DataFrame()


def trials_by_state(folder: Path, name: str) -> dict[str, int]:
    ledger = Ledger.open_existing(name, folder)
    out: dict[str, int] = {}
    for trial in ledger.trials():
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


def assert_each_cell_once(folder: Path, study_path: Path) -> pd.DataFrame:
    study = load_study(study_path)
    rows = raw_rows(folder)
    ok = rows[rows["status"] == "ok"]
    assert sorted(ok["cell_id"]) == sorted(c.cell_id for c in study.cells), "each cell exactly one ok row"
    deduped, _ = ok_and_failed(folder / "rows")
    assert len(deduped) == len(study.cells)
    return rows


def test_nan_cell_fails_rest_complete_and_rerun_duplicates_nothing(tmp_path, capsys):
    path = make_study(tmp_path, "nan", """\
        - name: vae
        - name: ae
          train: {kl_weight: 0.0}
        - name: diverges
          train: {divergence_threshold: 1.0e-3}
        """)
    out = tmp_path / "results"
    assert run_sweep(path, jobs=1, out=out, max_attempts=2, progress=False) == 1
    folder = out / "nan"
    rows = raw_rows(folder)
    ok, failed = ok_and_failed(folder / "rows")
    assert sorted(ok["arm"]) == ["ae", "vae"]
    # a divergence is deterministic (same config, same seed): not retried, and the summary says why it failed
    assert list(failed["arm"]) == ["diverges"] and sorted(failed["attempt"]) == [1]
    assert set(failed["error_class"]) == {"TrainingDiverged"}
    printed = capsys.readouterr().out
    assert f"failed: arm 'diverges' seed 0 (synthetic, lstm) cell {failed['cell_id'].iloc[0]}, 1 attempt(s): " \
           "TrainingDiverged: loss" in printed
    assert set(rows["study"]) == {"nan"} and rows["cell_id"].str.len().eq(12).all()
    assert trials_by_state(folder, "nan") == {"COMPLETE": 2, "FAIL": 1}
    ledger = Ledger.open_existing("nan", folder)
    failed_trial = next(t for t in ledger.trials() if t.state.name == "FAIL")
    assert failed_trial.user_attrs["error_class"] == "TrainingDiverged"
    assert failed_trial.user_attrs["cell_id"] == failed["cell_id"].iloc[0]
    assert not (folder / "checkpoints" / f"{ok['cell_id'].iloc[0]}.pt").exists()  # ok cells drop checkpoints

    # the study folder: manifest, study.json, study.yaml
    manifest = pq.read_table(folder / "manifest.parquet").to_pandas()
    assert sorted(manifest["arm"]) == ["ae", "diverges", "vae"]
    assert json.loads(manifest.loc[manifest["arm"] == "ae", "config"].iloc[0])["train"]["kl_weight"] == 0.0
    meta = json.loads((folder / "study.json").read_text())
    assert meta["study"] == "nan" and len(meta["study_hash"]) == 64
    assert (folder / "study.yaml").read_text() == path.read_text()

    status = status_text(path, out=out)
    assert "diverges" in status and "total" in status
    capsys.readouterr()

    # run again: only the failed cell is tried again (a fresh budget), ok cells are never re-run
    assert run_sweep(path, jobs=1, out=out, max_attempts=1, progress=False) == 1
    again = raw_rows(folder)
    assert len(again) == len(rows) + 1
    assert sorted(again[again["status"] == "ok"]["run_id"]) == sorted(rows[rows["status"] == "ok"]["run_id"])
    assert sorted(again[again["status"] == "failed"]["attempt"]) == [1, 2]


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    path = make_study(tmp_path, "ff", """\
        - name: diverges
          train: {divergence_threshold: 1.0e-3}
        - name: vae
          train: {kl_weight: [0.5, 1.0]}
        """)
    out = tmp_path / "results"
    assert run_sweep(path, jobs=1, out=out, fail_fast=True, progress=False) == 1
    rows = raw_rows(out / "ff")
    assert list(rows["status"]) == ["failed"] and list(rows["attempt"]) == [1]


def test_malformed_study_is_one_line_and_writes_nothing(tmp_path, capsys):
    path = make_study(tmp_path, "bad", """\
        - name: vae
          train: {kl_wieght: 0.5}
        """)
    out = tmp_path / "results"
    for extra in ([], ["--dry-run"]):
        assert main(["sweep", str(path), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(path) in err and "line 10" in err and "train.kl_wieght" in err
        assert "did you mean 'kl_weight'" in err
    assert not out.exists()


def test_dry_run_prints_counts_and_writes_nothing(tmp_path, capsys):
    path = make_study(tmp_path, "dry", "- name: vae\n  train: {kl_weight: [0.5, 1.0]}\n", seeds="[0, 1, 2]")
    out = tmp_path / "results"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "6 cells" in text and "6 would be queued" in text
    assert not out.exists()


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def test_sigkilled_worker_loses_no_run_and_rerun_completes_each_cell_once(tmp_path):
    path = make_study(tmp_path, "kill", """\
        - name: vae
          train: {epochs: 8, kl_weight: [0.25, 0.5, 0.75, 1.0]}   # long enough to catch one running
        """)
    out = tmp_path / "results"
    folder = out / "kill"
    sweep = subprocess.Popen([sys.executable, "-m", "ablate", "sweep", str(path), "--jobs", "2", "--out",
                              str(out), "--quiet"], env=_env(), start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: any((folder / "rows").glob("*.a1.parquet")), 180, "a first result", sweep)
        victim: list[int] = []

        def running_worker() -> bool:
            ledger = Ledger.open_existing("kill", folder)
            pids = [t.user_attrs.get("pid") for t in ledger.trials() if t.state.name == "RUNNING"]
            victim[:] = [p for p in pids if p and p != sweep.pid]
            return bool(victim)

        _wait(running_worker, 120, "a worker running a cell", sweep)
        os.kill(victim[0], signal.SIGKILL)
        # the coordinator notices, reclaims the killed attempt and finishes the study with a fresh worker; then
        # kill the whole sweep anyway if it is still going, to exercise the reclaim on re-run as well
        time.sleep(1.0)
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait(timeout=60)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    assert run_sweep(path, jobs=1, out=out, progress=False) == 0
    rows = assert_each_cell_once(folder, path)
    died = rows[rows["status"] == "failed"]
    assert set(died["error_class"]) <= {"WorkerDied"}
    trials = Ledger.open_existing("kill", folder).trials()
    # the killed attempt is on record: a WorkerDied row, or (killed just after writing its row) a reclaimed trial
    assert len(died) >= 1 or any("reclaimed" in t.user_attrs.get("note", "") for t in trials)
    assert sum(t.user_attrs.get("error_class") == "WorkerDied" for t in trials) == len(died)
    assert trials_by_state(folder, "kill").get("RUNNING", 0) == 0
    assert run_sweep(path, jobs=1, out=out, progress=False) == 0  # a third run has nothing to do
    assert len(raw_rows(folder)) == len(rows)


def test_two_concurrent_workers_on_one_journal_run_each_cell_once(tmp_path):
    path = make_study(tmp_path, "pair", "- name: vae\n  train: {kl_weight: [0.25, 0.5, 0.75, 1.0]}\n")
    study = load_study(path)
    folder = tmp_path / "results" / "pair"
    write_study_files(study, folder)
    ledger = Ledger.open("pair", folder)
    with ledger.lock():
        assert ledger.sync(study.cells, max_attempts=1)["enqueued"] == 4
    workers = [subprocess.Popen([sys.executable, "-m", "ablate", "worker", str(folder), "--quiet",
                                 "--threads", "1"], env=_env()) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0
    rows = assert_each_cell_once(folder, path)
    assert (rows["status"] == "ok").all()
    assert trials_by_state(folder, "pair") == {"COMPLETE": 4}
    claimed_by = {t.user_attrs["pid"] for t in Ledger.open_existing("pair", folder).trials()}
    assert claimed_by <= {w.pid for w in workers}
    assert "done" in status_text(folder)


def test_worker_dying_after_writing_its_row_is_reclaimed_as_done_not_rerun(tmp_path):
    """The worker wrote its ok row, then died before telling the ledger: the re-run must not run the cell again."""
    from ablate.engine.run import execute

    path = make_study(tmp_path, "late", "- name: vae\n")
    study = load_study(path)
    folder = tmp_path / "results" / "late"
    write_study_files(study, folder)
    ledger = Ledger.open("late", folder)
    with ledger.lock():
        ledger.sync(study.cells, max_attempts=2)
    trial = ledger.pop()
    (cell,) = study.cells
    execute(cell.config, folder, labels={"study": "late", "cell_id": cell.cell_id, "arm": "vae",
                                                  "attempt": 1}, progress=False, file_stem=f"{cell.cell_id}.a1")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    claim = {**trial.user_attrs["claim"], "pid": gone.pid, "pid_start": None}  # as if its worker had died
    ledger.storage.set_trial_user_attr(ledger.trial_id(trial), "claim", claim)
    assert run_sweep(path, jobs=1, out=tmp_path / "results", progress=False) == 0
    rows = assert_each_cell_once(folder, path)
    assert len(rows) == 1
    (done,) = Ledger.open_existing("late", folder).trials()
    assert done.state.name == "COMPLETE" and "reclaimed" in done.user_attrs["note"]


def test_a_cell_continues_from_its_checkpoint(tmp_path):
    """results/<study>/checkpoints/<cell_id>.pt is handed to the run: a retried cell resumes, not restarts."""
    import torch

    from ablate.engine.run import execute

    path = make_study(tmp_path, "resume", "- name: vae\n  train: {epochs: 2}\n")
    (cell,) = load_study(path).cells
    checkpoint = tmp_path / "results" / "resume" / "checkpoints" / f"{cell.cell_id}.pt"
    first_epoch = cell.config.model_copy(deep=True)
    first_epoch.train.epochs = 1  # what a killed attempt leaves behind: the state after epoch 1 of 2
    execute(first_epoch, tmp_path / "scratch", checkpoint=checkpoint, progress=False)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state"]["epoch"] == 1
    saved["state"]["finished"] = False  # it was killed, not finished
    saved["curves"][0]["loss"] = 12345.0  # a marker that only a resumed run can carry into its curves
    torch.save(saved, checkpoint)
    assert run_sweep(path, jobs=1, out=tmp_path / "results", progress=False) == 0
    curves = pq.read_table(tmp_path / "results" / "resume" / "curves" / f"{cell.cell_id}.a1.curves.parquet")
    curves = curves.to_pandas()
    assert 12345.0 in set(curves["loss"]) and curves["epoch"].max() == 1
    assert not checkpoint.exists()  # an ok cell drops its checkpoint


def test_status_counts_per_arm_and_model_when_a_study_has_several_models(tmp_path):
    from ablate.sweep.progress import count_cells

    base = TINY + "models:\n  - {nz: 4}\n  - {label: wide, nz: 8}\nexclude: [{model: wide, arm: ae}]\n"
    study = load_study(make_study(tmp_path, "two_models", """\
        - name: vae
        - name: ae
          train: {kl_weight: 0.0}
        """, seeds="[0, 1]", base=base))
    counts = count_cells(None, study)
    assert {k: (v.expected, v.pending) for k, v in counts.items()} == {
        "vae [lstm]": (2, 2), "vae [wide]": (2, 2), "ae [lstm]": (2, 2)}


def test_result_rows_carry_the_study_labels_of_dataset_and_model():
    from ablate.core.config_reading import build_config
    from ablate.engine.run import base_row

    config = build_config({"model": {"nz": 4}}, "<test>")
    assert (base_row(config, "r", {})["model"], base_row(config, "r", {})["dataset"]) == ("lstm", "synthetic")
    row = base_row(config, "r", {"model": "wide", "dataset": "synthetic_small"})
    assert (row["model"], row["dataset"], row["config.model.name"]) == ("wide", "synthetic_small", "lstm")


def test_a_sweep_names_each_finished_cell_and_tells_apart_rows_of_another_set(tmp_path, capsys):
    """Issue 26.6: one line per finished cell naming its arm and seed; re-swept with another --set into the same
    folder, the sweep warns, `status` counts the other cells and `ablate results` shows the column that differs."""
    path = make_study(tmp_path, "named", "- name: vanilla\n- name: ae\n  train: {kl_weight: 0.0}\n", seeds="[0, 1]")
    out = str(tmp_path / "results")
    assert main(["sweep", str(path), "--out", out]) == 0
    said = capsys.readouterr().err
    for arm in ("vanilla", "ae"):
        for seed in (0, 1):
            assert len([line for line in said.splitlines() if line.startswith(f"{arm} seed {seed}: done: test NLL ")
                        and "AU" in line and "; cell " in line]) == 1, said
    assert main(["sweep", str(path), "--out", out, "--set", "train.epochs=2"]) == 0
    said = capsys.readouterr().err
    assert "swept before with no --set, now with --set train.epochs=2; the 4 earlier cell(s)' rows stay" in said
    assert "4 more cell(s) with results that the study as now defined does not have" in status_text(
        tmp_path / "results" / "named")
    capsys.readouterr()
    assert main(["results", str(tmp_path / "results" / "named")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "config.train.epochs" in table[0] and len(table) == 9


def test_arms_narrow_what_a_sweep_queues_and_what_a_worker_takes(tmp_path, capsys):
    """--arms: a sweep queues and runs only those arms' cells (the study's records stay whole); a worker takes
    only those arms' queued cells and leaves the rest waiting; an unknown arm is one line, before anything is
    written."""
    path = make_study(tmp_path, "some", "- name: vae\n- name: ae\n  train: {kl_weight: 0.0}\n- name: fb\n"
                                        "  techniques: {free_bits: {mode: per_dim_example, lambda_per_dim: 0.5}}\n")
    out = tmp_path / "results"
    folder = out / "some"
    assert main(["sweep", str(path), "--out", str(out), "--arms", "ae,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "'nope'" in err and "vae, ae, fb" in err
    assert not out.exists()

    assert run_sweep(path, jobs=1, out=out, progress=False, arms=["ae"]) == 0
    assert sorted(raw_rows(folder)["arm"]) == ["ae"]
    assert sorted(pq.read_table(folder / "manifest.parquet").to_pandas()["arm"]) == ["ae", "fb", "vae"]
    assert trials_by_state(folder, "some") == {"COMPLETE": 1}

    assert run_sweep(path, out=out, progress=False, no_work=True) == 0  # queues vae and fb
    assert run_sweep(path, jobs=2, out=out, progress=False, arms=["fb"]) == 0  # worker processes with --arms fb
    assert sorted(raw_rows(folder)["arm"]) == ["ae", "fb"]
    ledger = Ledger.open_existing("some", folder)
    assert [t.user_attrs["arm"] for t in ledger.trials() if t.state.name == "WAITING"] == ["vae"]

    assert main(["worker", str(folder), "--out", str(out), "--arms", "fb,x"]) == 2  # a study folder: its ledger's arms
    assert "'x'" in capsys.readouterr().err and not (folder / "rows" / "x").exists()
    assert main(["worker", str(path), "--out", str(out), "--arms", "vae", "--no-progress"]) == 0
    assert trials_by_state(folder, "some") == {"COMPLETE": 3}
    assert_each_cell_once(folder, path)


def test_a_worker_reports_where_a_long_epoch_stands(tmp_path, monkeypatch):
    """Every PROGRESS_SECONDS (0 here: after every step) a worker's attempt records its epoch, phase, step of the
    epoch's steps and inner steps so far in the ledger — what `ablate status` prints between validation points."""
    from ablate.engine import train as train_module

    monkeypatch.setattr(train_module, "PROGRESS_SECONDS", 0.0)
    path = make_study(tmp_path, "slow", "- name: aggressive\n  techniques: {aggressive: {max_inner: 4, "
                                        "check_every: 2}}\n")
    out = tmp_path / "results"
    seen: list[dict] = []
    report = Ledger.report_progress
    monkeypatch.setattr(Ledger, "report_progress", lambda self, trial, where: (seen.append(dict(where)),
                                                                                report(self, trial, where)))
    assert run_sweep(path, jobs=1, out=out, progress=False) == 0
    steps = -(-120 // 32)  # four batches of train per epoch
    assert [w["step"] for w in seen] == list(range(1, steps + 1))
    assert all(w["epoch"] == 0 and w["phase"] == "vae" and w["steps"] == steps for w in seen)
    inner = [w["inner_steps"] for w in seen]
    assert inner == sorted(inner) and inner[-1] > 0  # the aggressive inner loop's steps, cumulative
    (trial,) = Ledger.open_existing("slow", out / "slow").trials()
    assert {k: v for k, v in trial.user_attrs["progress"].items() if k != "at"} == seen[-1]
    assert trial.user_attrs["progress"]["at"].startswith("20")  # stamped (ISO time)
