"""The sweep's default worker count: one per GPU; on a CPU one per core, at most one per queued cell and per 2 GiB
of available memory; one with SQLite; `$ABLATE_JOBS` over the default and `--jobs` over both."""

from __future__ import annotations

import pytest

from ablate.cli.main import main
from ablate.core.config import ConfigError
from ablate.sweep import worker_count
from ablate.sweep.worker_count import default_jobs, jobs_from_environment

GIB = 1024**3


@pytest.fixture
def machine(monkeypatch):
    """A CPU machine of `cores` cores and `memory` bytes available, set per test."""

    def set_machine(cores: int, memory: int | None = 64 * GIB) -> None:
        monkeypatch.setattr(worker_count, "cores", lambda: cores)
        monkeypatch.setattr(worker_count, "available_memory", lambda: memory)

    return set_machine


def test_one_worker_per_core_at_most_one_per_cell(machine):
    machine(cores=2)
    assert default_jobs(45, []) == 2
    assert default_jobs(1, []) == 1
    assert default_jobs(0, []) == 1  # only cells running elsewhere: one worker waits for them here
    machine(cores=16)
    assert default_jobs(4, []) == 4
    assert default_jobs(None, []) == 16  # a search asks for trials as it goes


def test_memory_bounds_the_default(machine):
    machine(cores=16, memory=7 * GIB)
    assert default_jobs(45, []) == 3  # 7 GiB / 2 GiB per worker
    machine(cores=16, memory=GIB)
    assert default_jobs(45, []) == 1
    machine(cores=4, memory=None)  # no /proc/meminfo: cores alone
    assert default_jobs(45, []) == 4


def test_gpus_and_sqlite(machine):
    machine(cores=16)
    assert default_jobs(45, ["cuda:0", "cuda:1"]) == 2
    assert default_jobs(45, [], single_process=True) == 1


def test_threads_are_divided_among_the_workers(machine):
    machine(cores=8)
    assert [worker_count.threads_per_worker(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_the_environment_sets_the_default_and_a_bad_value_is_one_line(monkeypatch):
    monkeypatch.setenv("ABLATE_JOBS", "3")
    assert jobs_from_environment() == 3
    monkeypatch.delenv("ABLATE_JOBS")
    assert jobs_from_environment() is None
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("ABLATE_JOBS", bad)
        with pytest.raises(ConfigError, match=r"\$ABLATE_JOBS=.*positive integer"):
            jobs_from_environment()


def test_available_memory_reads_meminfo():
    memory = worker_count.available_memory()
    assert memory is None or memory > 0


def _plan(tmp_path, capsys, *args: str) -> str:
    study = tmp_path / "s.yaml"
    study.write_text("study: s\nbase: {train: {epochs: 1}}\nseeds: [0, 1, 2]\narms:\n  - name: vae\n")
    assert main(["sweep", str(study), "--out", str(tmp_path / "out"), "--dry-run", *args]) == 0
    return capsys.readouterr().out


def test_the_sweep_says_how_many_workers_and_why(tmp_path, capsys, machine, monkeypatch):
    machine(cores=2)
    monkeypatch.setattr(worker_count, "gpus", lambda: [])
    monkeypatch.setattr("ablate.sweep.runner.gpus", lambda: [])
    monkeypatch.delenv("ABLATE_JOBS")
    text = _plan(tmp_path, capsys)
    assert "2 worker processes × 1 torch thread(s) (the default: one per core" in text
    assert "1 worker in this process" in _plan(tmp_path, capsys, "--jobs", "1")
    monkeypatch.setenv("ABLATE_JOBS", "1")
    text = _plan(tmp_path, capsys)
    assert "1 worker in this process" in text and "the default" not in text
    monkeypatch.setenv("ABLATE_JOBS", "x")
    assert main(["sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "$ABLATE_JOBS='x'" in capsys.readouterr().err
