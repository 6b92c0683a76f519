"""Scale-out without a database server (issue 15): where the storage comes from, what is refused before anything is
written, one worker process per device (recorded in each row), the heartbeat rule on a SQLite RDB storage, and
`ablate collect` gathering the results of several machines."""

from __future__ import annotations


import pandas as pd
import pytest

from ablate.cli.main import main
from ablate.core.config import ConfigError
from ablate.sweep.worker import device_env, parse_devices
from malformed_inputs import STUDY


def test_devices_parse_and_set_each_workers_environment():
    assert parse_devices("cuda:0, cuda:1,cpu") == ["cuda:0", "cuda:1", "cpu"]
    assert device_env("cuda:1") == {"ABLATE_WORKER_DEVICE": "cuda:1", "CUDA_VISIBLE_DEVICES": "1"}
    assert device_env("cpu") == {"ABLATE_WORKER_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    for bad in ("gpu0", "cuda", ""):
        with pytest.raises(ConfigError, match="--devices"):
            parse_devices(bad)


def test_the_study_file_may_name_its_storage_and_the_command_line_overrides_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY + f"storage: sqlite:///{tmp_path}/own.db\n")
    assert main(["sweep", str(study), "--out", str(tmp_path / "r"), "-q"]) == 0
    assert (tmp_path / "own.db").exists() and not (tmp_path / "r" / "bad" / "ledger.journal").exists()
    assert "ledger sqlite:///" in _status(study, tmp_path, capsys)
    monkeypatch.setenv("ABLATE_STORAGE", f"sqlite:///{tmp_path}/env.db")  # the environment over the file
    assert main(["sweep", str(study), "--out", str(tmp_path / "r2"), "-q"]) == 0
    assert (tmp_path / "env.db").exists()


def _status(study, tmp_path, capsys) -> str:
    capsys.readouterr()
    assert main(["status", str(study), "--out", str(tmp_path / "r")]) == 0
    return capsys.readouterr().out


def test_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    out = tmp_path / "r"
    study.write_text(STUDY)
    assert main(["sweep", str(study), "--out", str(out), "--jobs", "2", "--storage", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "SQLite is for one process only" in capsys.readouterr().err
    assert main(["sweep", str(study), "--out", str(out), "--devices", "cuda:0,gpu1"]) == 2
    assert "'gpu1' is not a device" in capsys.readouterr().err
    study.write_text(STUDY + "storage: postgresql+psycopg://ann:secret@db/ablate\n")
    assert main(["sweep", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a password" in err and "secret" not in err
    assert not out.exists() and not (tmp_path / "x.db").exists()


def test_one_worker_process_per_device_each_recorded_in_its_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY.replace("seeds: [0]", "seeds: [0, 1, 2]"))
    assert main(["sweep", str(study), "--out", str(tmp_path / "r"), "--devices", "cpu,cpu", "-q"]) == 0
    rows = pd.read_parquet(tmp_path / "r" / "bad" / "rows")
    assert len(rows) == 3 and set(rows["worker_device"]) == {"cpu"} and set(rows["status"]) == {"ok"}


def test_a_silent_heartbeat_is_a_dead_worker_on_an_rdb_storage(tmp_path, monkeypatch):
    """A RUNNING attempt claimed on another machine: alive while it beats, reclaimed (failed, retried) once its
    heartbeat is older than the grace period (3 × the interval)."""
    import time

    from ablate.sweep.ledger import Ledger
    from ablate.sweep.study import load_study

    monkeypatch.setenv("ABLATE_HEARTBEAT_SECONDS", "1")
    study_file = tmp_path / "s.yaml"
    study_file.write_text(STUDY)
    study = load_study(study_file)
    url = f"sqlite:///{tmp_path}/hb.db"
    monkeypatch.setenv("ABLATE_HOST", "machine-b")
    elsewhere = Ledger.open("bad", tmp_path / "b", url)
    with elsewhere.lock():
        elsewhere.sync(study.cells, 2)
    trial = elsewhere.pop()
    assert elsewhere.heartbeats and trial is not None
    monkeypatch.setenv("ABLATE_HOST", "machine-a")
    here = Ledger(elsewhere.storage, "bad", tmp_path / "a")
    assert here.is_live(here.trials()[0])  # its first beat was at the claim
    time.sleep(4.2)
    here._stale = (-1.0, set())
    assert not here.is_live(here.trials()[0])
    with here.lock():
        reclaimed = here.reclaim(retry=True)
    assert [t.number for t in reclaimed] == [trial.number]
    states = sorted(t.state.name for t in here.trials())
    assert states == ["FAIL", "WAITING"]  # failed once (WorkerDied), queued again
    with here.lock():
        assert here.reclaim(retry=True) == []  # a second reclaimer finds nothing: never two retries


def test_collect_gathers_other_machines_attempts_once(tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY.replace("seeds: [0]", "seeds: [0, 1, 2]"))
    assert main(["sweep", str(study), "--out", str(tmp_path / "a"), "-q"]) == 0
    here = tmp_path / "a" / "bad"
    there = tmp_path / "b" / "bad"  # another machine's copy, holding one attempt this one lacks
    moved = sorted((here / "rows").glob("*.parquet"))[0]
    stem = moved.name.removesuffix(".parquet")
    for part, name in (("rows", f"{stem}.parquet"), ("curves", f"{stem}.curves.parquet"),
                       ("models", f"{stem}.model.pt")):
        (there / part).mkdir(parents=True, exist_ok=True)
        shutil.move(here / part / name, there / part / name)
    capsys.readouterr()
    assert main(["collect", str(here), str(there)]) == 0
    assert "1 attempt(s) collected, 0 already here" in capsys.readouterr().out
    assert (here / "models" / f"{stem}.model.pt").exists() and (here / "curves" / f"{stem}.curves.parquet").exists()
    assert len(pd.read_parquet(here / "results.parquet")) == 3
    import pyarrow as pa
    import pyarrow.parquet as pq

    theirs = there / "rows" / f"{stem}.parquet"  # a valid row of the same attempt with other contents
    table = pq.read_table(theirs)
    column = table.schema.get_field_index("test.nll")
    pq.write_table(table.set_column(column, "test.nll", pa.array([1.0])), theirs)
    assert main(["collect", str(here), str(there)]) == 0
    captured = capsys.readouterr()
    assert "0 attempt(s) collected, 0 already here, 1 conflict(s) left out" in captured.out
    assert "kept ours" in captured.err
    assert main(["collect", str(here), str(here)]) == 2


def test_a_worker_never_runs_a_cell_another_live_attempt_holds(tmp_path, monkeypatch):
    """Two queue entries for one cell (two coordinators raced): while the first is held by a live worker, the
    second is ended as a duplicate without running; once the first completed, another one is skipped as done."""
    from ablate.sweep.ledger import Ledger
    from ablate.sweep.study import load_study
    from ablate.sweep.worker import run_one

    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    study_file = tmp_path / "s.yaml"
    study_file.write_text(STUDY)
    cell = load_study(study_file).cells[0]
    ledger = Ledger.open("bad", tmp_path / "r", None)
    for _ in range(3):
        ledger.enqueue(cell, 1, 2)
    first, second = ledger.pop(), ledger.pop()
    assert first.user_attrs["cell_id"] == second.user_attrs["cell_id"] == cell.cell_id
    result = run_one(ledger, second)
    assert not result.ok and result.error == "Duplicate"
    assert not (tmp_path / "r" / "rows").exists() or not any((tmp_path / "r" / "rows").iterdir())  # nothing ran
    ledger.complete(first, {"valid.nll": 1.0})
    third = ledger.pop()
    assert run_one(ledger, third).ok
    states = sorted(t.state.name for t in ledger.trials())
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    assert ledger.trials()[2].user_attrs["note"] == "skipped: another attempt of the cell completed"
