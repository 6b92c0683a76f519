"""One test per defect of issue 12: the pickle, the YAML bomb, the redaction, the traversal, the torn journal, the
full disk, the read-only folder, the corrupt result file, and the files a killed attempt leaves behind."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import resource
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from ablate.core import safe_yaml
from ablate.core.config_reading import build_config
from ablate.results.safe_files import atomic_target, load_tensors
from ablate.engine.run import execute
from ablate.sweep import runner
from ablate.sweep.ledger import Ledger
from ablate.sweep.storage import redact, repair_journal
from ablate.sweep.runner import run_sweep, status_text
from conftest import tiny_overrides
from malformed_inputs import STUDY, _bomb
from test_bad_input import run_cli


class PlantedCode:
    """A pickle that, loaded with weights_only=False, writes a file (any code could stand here)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "code ran"))


# ------------------------------------------------------------------ 1. files we did not write are data


def test_a_planted_model_file_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.model.pt"
    torch.save({"config": tiny_overrides(), "model": {"w": PlantedCode(marker)}}, evil)
    code, text = run_cli(["sample", str(evil)])
    assert code == 2 and not marker.exists()
    assert text.startswith(f"error: {evil}: not a saved model ablate can load safely") and len(text.splitlines()) == 1


def test_a_planted_checkpoint_runs_no_code_in_a_worker(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "checkpoints" / "cell.pt"
    checkpoint.parent.mkdir()
    torch.save({"state": PlantedCode(marker)}, checkpoint)
    outcome = execute(build_config(tiny_overrides()), tmp_path, checkpoint=checkpoint, progress=False)
    assert not marker.exists()
    assert outcome.row["status"] == "failed" and outcome.row["error_class"] == "ConfigError"
    assert "not a checkpoint ablate can load safely" in outcome.row["error_message"]


def test_our_own_files_still_load(tmp_path):
    payload = {"config": {"seed": 1}, "model": {"w": torch.ones(2)}, "curves": [{"kl": float("inf")}]}
    torch.save(payload, tmp_path / "x.pt")
    loaded = load_tensors(tmp_path / "x.pt", "saved model")
    assert torch.equal(loaded["model"]["w"], torch.ones(2)) and loaded["curves"][0]["kl"] == float("inf")


# ------------------------------------------------------------------ 4. YAML bombs


def _brute_count(value) -> int:
    """Values of a loaded YAML document with every alias expanded, counted by walking it."""
    if isinstance(value, dict):
        return 1 + sum(_brute_count(k) + _brute_count(v) for k, v in value.items())
    if isinstance(value, list):
        return 1 + sum(_brute_count(v) for v in value)
    return 1


def _brute_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((max(_brute_depth(k), _brute_depth(v)) for k, v in value.items()), default=0)
    if isinstance(value, list):
        return 1 + max((_brute_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("levels,width", [(1, 2), (3, 3), (4, 5), (2, 9)])
def test_expanded_size_equals_a_walk_of_the_expanded_data(levels, width):
    text = _bomb(levels, width) + "x: {a: *a1, b: [*a0, *a0]}\n"
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    values, depth = safe_yaml.expanded_size(root)
    assert values == _brute_count(yaml.safe_load(text))
    assert depth == _brute_depth(yaml.safe_load(text))


def test_a_billion_laughs_is_refused_before_anything_walks_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(9) + "train: {epochs: *a9}\n")  # 9^9 ≈ 387M values once expanded
    for command in ("validate", "run", "sweep"):
        code, text = run_cli([command, str(path)])
        assert code == 2 and text == (f"error: {path}: its aliases (*name) expand to more than 100,000 values; "
                                      "write the values out or use fewer aliases")


def test_an_error_never_prints_an_unbounded_value(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("seed: [" + ", ".join(["7"] * 5000) + "]\n")
    code, text = run_cli(["validate", str(path)])
    assert code == 2 and len(text) < 300 and "seed" in text


# ------------------------------------------------------------------ 2. the storage password


def test_redaction_hides_the_password_only():
    assert redact("postgresql+psycopg2://u:s3cr%40t@host:5432/db") == "postgresql+psycopg2://u:***@host:5432/db"
    assert redact("redis://:pw@host/0") == "redis://:***@host/0"
    assert redact("sqlite:///x.db") == "sqlite:///x.db" and redact("results/a.journal") == "results/a.journal"


def test_an_unreachable_storage_is_one_line_without_the_password(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    for url in ("postgresql+psycopg2://ann:hunter2@127.0.0.1:1/ablate", "sqlite:////no/such/dir/ledger.db",
                "mysql+pymysql://ann:hunter2@db.example/ablate"):
        for command in ("sweep", "status"):
            code, text = run_cli([command, str(study), "--storage", url, "--out", str(tmp_path / "results")])
            assert code == 2 and len(text.splitlines()) == 1 and "hunter2" not in text, text
            assert text.startswith(f"error: --storage {redact(url)}: ")
    assert not (tmp_path / "results").exists()


def test_workers_get_the_storage_by_environment_not_argv(tmp_path, monkeypatch):
    """The sweep's worker processes: the URL is in their environment, never on the command line `ps` shows."""
    started = []

    class Finished:
        returncode = 0
        pid = 1

        def poll(self):
            return 0

    def fake_popen(command, env, stdin):
        started.append((command, env))
        return Finished()

    monkeypatch.setattr(runner.subprocess, "Popen", fake_popen)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    storage = str(tmp_path / "secret-place.journal")
    run_sweep(study, jobs=2, storage=storage, out=tmp_path / "results", progress=False)
    assert started
    for command, env in started:
        assert not any(storage in part for part in command) and "--storage" not in command
        assert env["ABLATE_STORAGE"] == storage


# ------------------------------------------------------------------ 3. the report stays inside --out


def _results_folder(root: Path, study_name: str) -> Path:
    """A results folder with one real result row, whose study.json names the study `study_name`."""
    folder = root / "planted"
    outcome = execute(build_config(tiny_overrides()), folder, progress=False, save_model=False)
    assert outcome.ok
    (folder / "study.json").write_text(json.dumps({"study": study_name}))
    return folder


@pytest.mark.parametrize("name", ["..", "../..", "/etc", "a/../../b", "..\\x", ".hidden"])
def test_a_study_name_never_becomes_a_path_out_of_the_report(tmp_path, name):
    folder = _results_folder(tmp_path / "in", name)
    out = tmp_path / "a" / "b" / "rep"
    code, _ = run_cli(["report", str(folder), "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["rep"]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    assert not any(part.startswith(".") and part != ".ablate-report-files.json"
                   for p in out.rglob("*") for part in p.relative_to(out).parts)


# ------------------------------------------------------------------ 7. a corrupt result file


def test_a_corrupt_result_file_is_skipped_named_and_counted(tmp_path):
    folder = _results_folder(tmp_path / "in", "study")
    bad = folder / "rows" / "0123456789ab.a1.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "rep"
    code, text = run_cli(["report", str(folder), "--out", str(out)])
    assert code == 0
    assert f"warning: 1 unreadable file(s) left out (counted in coverage): {bad}" in text
    coverage = json.loads(next(out.rglob("*-coverage.json")).read_text())
    assert any("0123456789ab.a1.parquet" in note and "1 file(s)" in note for note in coverage["notes"])


# ------------------------------------------------------------------ 5. a torn journal, a full disk


def _swept(tmp_path: Path) -> tuple[Path, Path]:
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    assert run_sweep(study, jobs=1, out=tmp_path / "results", progress=False) == 0
    return study, tmp_path / "results" / "bad"


def test_a_torn_journal_is_repaired_keeping_every_intact_record(tmp_path, capsys):
    study, folder = _swept(tmp_path)
    journal = folder / "ledger.journal"
    intact = journal.read_bytes().splitlines()
    glued = json.dumps({"op_code": 8, "worker_id": "w", "trial_id": 0, "user_attr": {"note": "after"}},
                       separators=(",", ":")).encode()
    # a write cut short by a full disk, the next append glued onto it, then one more whole record
    journal.write_bytes(b"\n".join(intact) + b'\n{"op_code":5,"worker_id":"w","trial_id":0,"sta' + glued + b"\n"
                        + glued + b"\n" + b'{"op_code":6,"wor')
    torn = journal.read_bytes()
    assert "study 'bad'" in status_text(study, out=tmp_path / "results")  # read-only: reads a repaired copy
    assert "1 partial record(s)" in capsys.readouterr().err and journal.read_bytes() == torn
    Ledger.open("bad", folder)  # a sweep's opening repairs the study folder's own journal
    warning = capsys.readouterr().err
    assert "repaired a torn journal" in warning and "dropped 1 partial record(s)" in warning
    assert journal.read_bytes().splitlines()[:len(intact) + 2] == intact + [glued, glued]
    assert [p.read_bytes() for p in folder.glob("ledger.journal.torn-*")] == [torn]
    assert repair_journal(journal) is None  # whole again
    assert not list(folder.glob(".*.tmp"))
    assert run_sweep(study, jobs=1, out=tmp_path / "results", progress=False) == 0


def test_a_write_cut_short_is_one_line_and_the_next_command_repairs_the_journal(tmp_path, monkeypatch):
    """A real partial write: the sweep's child process may write files no larger than the journal + 50 bytes, so
    its next journal append is cut off mid-record (as on a full disk)."""
    study, folder = _swept(tmp_path)
    study.write_text(STUDY + "  - name: ae\n    train: {kl_weight: 0.0}\n")
    journal = folder / "ledger.journal"
    limit = journal.stat().st_size + 50
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            code, text = run_cli(["sweep", str(study), "--out", str(tmp_path / "results"), "--quiet"])
            code = code if text.startswith("error: file too large") and len(text.splitlines()) == 1 else 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert journal.stat().st_size == limit and not journal.read_bytes().endswith(b"\n")  # torn
    assert not [p for p in folder.rglob("*.tmp")]
    code, text = run_cli(["status", str(study), "--out", str(tmp_path / "results")])
    assert code == 0 and "the file is unchanged" in text and "(50 bytes)" in text
    code, text = run_cli(["sweep", str(study), "--out", str(tmp_path / "results"), "--quiet"])
    assert code == 0 and "repaired a torn journal" in text and "(50 bytes)" in text


def test_disk_full_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "bad" / "study.yaml"))

    monkeypatch.setattr(runner, "write_study_files", full)
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    code, text = run_cli(["sweep", str(study), "--out", str(tmp_path / "results")])
    assert code == 1 and text == (f"error: disk full writing {tmp_path}/results/bad/study.yaml: free space (or choose "
                                  "another folder) and run the same command again")

    target = tmp_path / "row.parquet"
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        with atomic_target(target) as tmp:
            tmp.write_bytes(b"half a fi")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ 6. an unwritable --out, found before any work


def test_an_unwritable_out_is_found_before_training(tmp_path):
    """As a user without write access (root ignores permission bits, so a root test drops to 'nobody', who may
    not read the Python installation: what the commands import is imported first)."""
    import ablate.report.build  # noqa: F401
    import ablate.cli.report  # noqa: F401
    import ablate.cli.sweep  # noqa: F401

    base = Path(tempfile.mkdtemp())
    os.chmod(base, 0o755)
    readonly = base / "ro"
    readonly.mkdir()
    os.chmod(readonly, 0o555)
    config, study = base / "c.yaml", base / "s.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides()))
    study.write_text(STUDY)
    runs = _results_folder(base / "in", "study")
    for path in [config, study, *base.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(readonly, 0o555)
    commands = [["run", str(config), "--out", str(readonly / "results")],
                ["sweep", str(study), "--out", str(readonly / "results")],
                ["report", str(runs), "--out", str(readonly / "reports")]]
    for argv in commands:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 99
            try:
                if os.geteuid() == 0:
                    try:
                        os.setgid(65534)
                        os.setuid(65534)
                    except PermissionError:
                        os._exit(77)  # root without the right to drop privileges: cannot test here
                code, text = run_cli(argv)
                ok = text == (f"error: --out {argv[-1]}: cannot write in {readonly} (Permission denied); choose a "
                              "writable folder")
                code = code if ok else 98
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 77:
            pytest.skip("running as root without the right to drop privileges: no unwritable folder to test")
        assert os.waitstatus_to_exitcode(status) == 2, argv
    assert list(readonly.iterdir()) == []


# ------------------------------------------------------------------ also: what a killed attempt leaves behind


def test_files_of_killed_attempts_are_removed_on_resume(tmp_path, capsys):
    study, folder = _swept(tmp_path)
    cell = json.loads((folder / "study.json").read_text()) and next((folder / "rows").glob("*.a1.parquet")).name[:12]
    orphans = [folder / "models" / "0123456789ab.a1.model.pt", folder / "rows" / f".{cell}.a2.parquet.999999.tmp",
               folder / "checkpoints" / f"{cell}.pt"]  # a done cell's checkpoint, a dead writer's temporary file
    for path in orphans:
        path.write_bytes(b"x")
    os.utime(orphans[1], (0, 0))  # a temporary file is only taken for abandoned once it is old
    kept = folder / "models" / f"{cell}.a1.model.pt"
    capsys.readouterr()
    assert run_sweep(study, jobs=1, out=tmp_path / "results", progress=False) == 0
    assert "removed 3 file(s) of attempts that were killed" in capsys.readouterr().out
    assert not any(p.exists() for p in orphans) and kept.exists()


def test_queued_cells_of_a_stopped_sweep_are_called_queued(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(STUDY)
    from ablate.sweep.study import load_study

    loaded = load_study(study)
    folder = tmp_path / "results" / "bad"
    ledger = Ledger.open("bad", folder)
    with ledger.lock():
        ledger.sync(loaded.cells, 2)  # queued, then the sweep was killed before a worker took them
    assert run_sweep(study, jobs=1, out=tmp_path / "results", progress=False) == 0
    printed = capsys.readouterr().out
    assert "1 still queued from an earlier sweep" in printed and "elsewhere" not in printed


def test_a_diverged_run_is_one_line_even_with_progress(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(**{"train.divergence_threshold": 1e-3})))
    result = subprocess.run(["python", "-m", "ablate", "run", str(config), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("run failed")] == [
        line for line in result.stderr.splitlines() if "TrainingDiverged" in line]
