"""Issue 27, items 1 and 2: no command damages a journal it did not write, and no kill between the writes of a
claim can leave a RUNNING trial that looks alive forever.

The kill points are injected, not timed: a forked worker counts the ledger writes of `Ledger.pop` and exits
(`os._exit`, as SIGKILL would leave it: no cleanup) just before write k, for every k up to after the last one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ablate.sweep import ledger as ledger_module
from ablate.sweep import liveness as liveness_module
from ablate.sweep import storage as storage_module
from ablate.sweep.attempts import claim_of
from ablate.sweep.ledger import Ledger
from ablate.sweep.liveness import HOST_ENV
from ablate.sweep.runner import run_sweep, status_text
from ablate.sweep.study import load_study
from malformed_inputs import STUDY
from test_bad_input import run_cli

WRITES = ("record_heartbeat", "set_trial_user_attr", "set_trial_state_values", "set_trial_param")


def _queued(tmp_path: Path, url: str | None = None) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    study_file = tmp_path / "s.yaml"
    study_file.write_text(STUDY)
    folder = tmp_path / "results" / "bad"
    ledger = Ledger.open("bad", folder, url)
    with ledger.lock():
        ledger.sync(load_study(study_file).cells, 2)
    return study_file, folder


def _pop_killed_at(folder: Path, url: str | None, kill_at: int, host: str | None = None) -> tuple[int, int]:
    """Fork a worker that pops a trial and dies just before its write number `kill_at` (0-based); returns the
    child's exit code (9: killed at that write, 7: all writes done, then killed) and the writes it made."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            if host is not None:
                os.environ[HOST_ENV] = host
            storage_module._STORAGES.clear()  # the child's own connection, not the parent's pool
            ledger = Ledger.open_existing("bad", folder, url, write=True)
            count = [0]
            for name in WRITES:
                original = getattr(ledger.storage, name, None)
                if original is None:  # heartbeats: RDB storages only
                    continue

                def counted(*args, _original=original, **kwargs):
                    if count[0] == kill_at:
                        os.write(write, str(count[0]).encode())
                        os._exit(9)
                    count[0] += 1
                    return _original(*args, **kwargs)

                setattr(ledger.storage, name, counted)
            trial = ledger.pop()
            os.write(write, str(count[0]).encode())
            code = 7 if trial is not None else 8
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    made = int(os.read(read, 64) or b"-1")
    os.close(read)
    return os.waitstatus_to_exitcode(status), made


def test_a_kill_between_any_two_claim_writes_never_leaves_a_live_looking_trial(tmp_path):
    """Journal storage, one machine: wherever the worker died, the trial is either still WAITING (it never won)
    or RUNNING with no live owner, which `reclaim` fails and queues again — the cell is never stuck."""
    kill_at, outcomes = 0, []
    while True:
        case = tmp_path / f"k{kill_at}"
        _, folder = _queued(case)
        code, made = _pop_killed_at(folder, None, kill_at)
        ledger = Ledger.open_existing("bad", folder, write=True)
        (trial,) = ledger.trials()
        outcomes.append((kill_at, code, trial.state.name))
        assert not (trial.state.name == "RUNNING" and ledger.is_live(trial)), outcomes[-1]
        with ledger.lock():
            ledger.reclaim(retry=True)
        assert any(t.state.name == "WAITING" for t in ledger.trials()), outcomes[-1]
        assert ledger.pop() is not None  # the next worker gets the cell
        if code == 7:  # every write made, then killed
            break
        assert code == 9 and made == kill_at
        kill_at += 1
    assert kill_at >= 5  # heartbeat-free journal: claimant, RUNNING, claim, params, pid/host/…
    assert [state for _, _, state in outcomes[:2]] == ["WAITING", "WAITING"]  # died before winning the claim


def test_a_claim_half_written_on_another_machine_is_reclaimed_after_the_grace(tmp_path, monkeypatch):
    """The trial of issue 27: RUNNING with a pid but no host (a ledger from before the one-record claim). Read on
    another machine, it is live only within CLAIM_GRACE_SECONDS of its start; then reclaimed."""
    _, folder = _queued(tmp_path)
    ledger = Ledger.open_existing("bad", folder, write=True)
    (trial,) = ledger.trials()
    trial_id = ledger.trial_id(trial)
    ledger.storage.set_trial_user_attr(trial_id, "claimant:machine-b:123:456", "now")
    assert ledger.storage.set_trial_state_values(trial_id, ledger_module.TrialState.RUNNING)
    ledger.storage.set_trial_user_attr(trial_id, "pid", 123)  # killed here, before "host"
    (trial,) = ledger.trials()
    assert claim_of(trial) is None
    assert ledger.is_live(trial)  # within the grace: its owner may be writing the rest
    monkeypatch.setattr(liveness_module, "CLAIM_GRACE_SECONDS", 0.0)
    assert not ledger.is_live(trial)
    with ledger.lock():
        assert [t.number for t in ledger.reclaim(retry=True)] == [trial.number]


def test_on_an_rdb_storage_every_kill_point_of_a_remote_claim_ends_in_silence(tmp_path, monkeypatch):
    """Another machine's worker killed at any write of its claim: its heartbeat (recorded before the claim) goes
    stale, or its claim never completes, and this machine reclaims the trial once the grace has passed."""
    import time

    monkeypatch.setenv("ABLATE_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv(HOST_ENV, "machine-a")
    cases, kill_at = [], 0
    while True:
        url = f"sqlite:///{tmp_path}/k{kill_at}.db"
        _, folder = _queued(tmp_path / f"k{kill_at}", url)
        code, _ = _pop_killed_at(folder, url, kill_at, host="machine-b")
        cases.append((kill_at, url, folder))
        if code == 7:
            break
        kill_at += 1
    assert kill_at >= 6
    time.sleep(3.5)  # > the grace of 3 heartbeat intervals
    monkeypatch.setattr(liveness_module, "CLAIM_GRACE_SECONDS", 3.0)
    for kill_at, url, folder in cases:
        ledger = Ledger.open_existing("bad", folder, url, write=True)
        (trial,) = ledger.trials()
        assert not (trial.state.name == "RUNNING" and ledger.is_live(trial)), (kill_at, trial.user_attrs)
        with ledger.lock():
            ledger.reclaim(retry=True)
        assert ledger.pop() is not None, kill_at


# ------------------------------------------------------------------ item 1: journals we did not write


def test_status_on_a_file_that_is_not_a_journal_changes_nothing(tmp_path):
    study_file, _ = _queued(tmp_path)
    other = tmp_path / "n.jsonl"
    other.write_text('{"a":1}\n')
    for command in (["status", str(study_file)], ["sweep", str(study_file), "--no-work"],
                    ["worker", str(study_file)], ["sweep", str(study_file), "--dry-run"]):
        code, text = run_cli(command + ["--out", str(tmp_path / "results"), "--storage", str(other)])
        if "--dry-run" not in command:  # a dry run does not open a storage it is given
            assert code == 2 and text == (f"error: {other}: not an Optuna journal (its first line is not a journal "
                                          "record); name a new file with --storage, or the journal a sweep wrote")
        assert other.read_text() == '{"a":1}\n', command


def _torn(folder: Path) -> tuple[Path, bytes]:
    journal = folder / "ledger.journal"
    torn = journal.read_bytes() + b'{"op_code":5,"worker_id":"w","trial_id":0,"sta'
    journal.write_bytes(torn)
    return journal, torn


def test_read_only_commands_read_a_torn_journal_without_repairing_it(tmp_path, capsys):
    study_file, folder = _queued(tmp_path)
    journal, torn = _torn(folder)
    assert "1 waiting" in status_text(study_file, out=tmp_path / "results") or "waiting" in status_text(
        study_file, out=tmp_path / "results")
    assert "the file is unchanged; `ablate sweep` repairs it" in capsys.readouterr().err
    code, _ = run_cli(["sweep", str(study_file), "--dry-run", "--out", str(tmp_path / "results")])
    assert code == 0 and journal.read_bytes() == torn
    assert not list(folder.glob("ledger.journal.torn-*"))


def test_the_sweep_repairs_its_own_journal_keeping_the_original_beside_it(tmp_path, capsys):
    study_file, folder = _queued(tmp_path)
    journal, torn = _torn(folder)
    assert run_sweep(study_file, jobs=1, out=tmp_path / "results", progress=False) == 0
    (backup,) = folder.glob("ledger.journal.torn-*")
    assert backup.read_bytes() == torn
    assert f"the original kept as {backup.name}" in capsys.readouterr().err
    assert journal.read_bytes().endswith(b"\n")


def test_a_torn_journal_named_by_storage_is_refused_not_rewritten(tmp_path):
    study_file, folder = _queued(tmp_path)
    journal, torn = _torn(folder)
    elsewhere = tmp_path / "mine.journal"
    elsewhere.write_bytes(torn)
    code, text = run_cli(["sweep", str(study_file), "--out", str(tmp_path / "other"), "--storage", str(elsewhere)])
    assert code == 2 and "this journal is torn" in text and "does not repair it" in text and len(
        text.splitlines()) == 1
    assert elsewhere.read_bytes() == torn and not list(tmp_path.glob("mine.journal.torn-*"))


def test_a_symlinked_journal_is_never_written_through(tmp_path):
    study_file, folder = _queued(tmp_path)
    journal = folder / "ledger.journal"
    target = tmp_path / "elsewhere.journal"
    journal.rename(target)
    journal.symlink_to(target)
    before = target.read_bytes()
    code, text = run_cli(["sweep", str(study_file), "--out", str(tmp_path / "results")])
    assert code == 2 and "is a symbolic link" in text and len(text.splitlines()) == 1
    assert target.read_bytes() == before
    code, text = run_cli(["status", str(study_file), "--out", str(tmp_path / "results")])
    assert code == 0, text  # reading through it is harmless


def test_a_claim_is_one_record(tmp_path):
    _, folder = _queued(tmp_path)
    ledger = Ledger.open_existing("bad", folder, write=True)
    trial = ledger.pop()
    claims = [json.loads(line) for line in (folder / "ledger.journal").read_text().splitlines()
              if '"claim"' in line]
    assert len(claims) == 1 and set(claims[0]["user_attr"]["claim"]) == {"pid", "pid_start", "host", "claimed_at"}
    assert claim_of(trial)["pid"] == os.getpid()


@pytest.fixture(autouse=True)
def _no_storage_env(monkeypatch):
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)


# ------------------------------------------------------------------ item 3: a storage outage


class _FlakyStorage:
    """A storage whose `get_all_trials` fails as an unreachable server does, `failures` times."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

    def get_all_trials(self, study_id):
        import sqlalchemy.exc

        self.calls += 1
        if self.calls <= self.failures:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
        return ["trial"]

    def get_study_id_from_name(self, name):
        raise KeyError(name)  # not an outage: passes straight through


def test_an_outage_is_waited_out_then_given_up_in_one_line(monkeypatch, capsys):
    from ablate.core.errors import Fault
    from ablate.sweep.storage import StorageUnavailable, ride_out_outages

    monkeypatch.setattr(storage_module.time, "sleep", lambda seconds: None)
    monkeypatch.setenv("ABLATE_STORAGE_PATIENCE", "60")
    flaky = ride_out_outages(_FlakyStorage(failures=3), "postgresql://u:secret@db/x")
    assert flaky.get_all_trials(0) == ["trial"] and flaky.calls == 4
    said = capsys.readouterr().err
    assert said.count("unreachable (OperationalError); waiting for it, up to 60 s") == 1 and "secret" not in said
    assert "reachable again" in said
    with pytest.raises(KeyError):
        flaky.get_study_id_from_name("x")
    monkeypatch.setenv("ABLATE_STORAGE_PATIENCE", "0")
    down = ride_out_outages(_FlakyStorage(failures=10 ** 6), "postgresql://u:secret@db/x")
    with pytest.raises(StorageUnavailable) as raised:
        down.get_all_trials(0)
    assert isinstance(raised.value, Fault) and "secret" not in str(raised.value)
    assert str(raised.value).endswith("run the same command again when the server is back")


def test_a_commit_that_failed_for_an_outage_is_an_outage():
    """Optuna's RDB storage re-raises a failed commit as StorageInternalError `from` the driver's error (CI saw a
    PostgreSQL restart land mid-commit); an outage is read through the cause, a bad request is not one."""
    import optuna.exceptions
    import sqlalchemy.exc

    from ablate.sweep.storage import is_outage

    def wrapped(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except Exception as error:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error
        except optuna.exceptions.StorageInternalError as outer:
            return outer

    lost = sqlalchemy.exc.OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))
    refused = sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("duplicate key"))
    assert is_outage(wrapped(lost)) and is_outage(lost)
    assert not is_outage(wrapped(refused)) and not is_outage(optuna.exceptions.StorageInternalError("too long"))


def test_status_says_where_each_live_attempt_stands():
    """`ablate status`: one line per live attempt — arm, seed, cell, attempt, time since its claim, its last
    validation point (a dead worker's attempt and finished ones say nothing)."""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from ablate.sweep.progress import running_lines

    def trial(state, live, **attrs):
        return SimpleNamespace(state=state, live=live, user_attrs=attrs)

    point = {"epoch": 4, "phase": "vae", "rec": 101.234, "kl": 0.7071, "nelbo": 101.94, "beta": 1.0, "au": 1,
             "at": "2026-12-03T03:10:00+00:00"}
    curve = [dict(point, epoch=1, phase="pretrain", at="2026-12-03T02:10:00+00:00"),  # another phase: not timed
             dict(point, epoch=2, at="2026-12-03T02:58:00+00:00"), dict(point, epoch=3, at="2026-12-03T03:05:00+00:00"),
             point]
    trials = [trial(TrialState.RUNNING, True, arm="ae_fb", seed=0, cell_id="b649035d505b", attempt=7,
                    claimed_at="2026-12-03T02:03:00+00:00", valid_curve=curve),
              trial(TrialState.RUNNING, True, arm="lm", seed=1, cell_id="abc", attempt=1,
                    claimed_at="2026-12-03T03:10:00+00:00"),
              trial(TrialState.RUNNING, True, arm="old", seed=2, cell_id="e", attempt=3, claimed_at="yesterday",
                    valid_curve=[{"epoch": 1}]),
              trial(TrialState.RUNNING, False, arm="dead", seed=0, cell_id="d", attempt=1)]
    ledger = SimpleNamespace(trials=lambda states: [t for t in trials if t.state in states],
                             is_live=lambda t: t.live)
    now = datetime(2026, 12, 3, 3, 11, 5, tzinfo=timezone.utc)
    assert running_lines(ledger, now) == [
        "running: arm 'ae_fb' seed 0 cell b649035d505b (attempt 7, claimed 1h08m ago): epoch 5 [vae] done: "
        "valid rec 101.23, KL 0.707, -ELBO 101.94, AU 1, ≈ 6m00s an epoch (last 2)",  # (03:10 − 02:58) / 2
        "running: arm 'lm' seed 1 cell abc (attempt 1, claimed 1m05s ago): no epoch finished in this attempt yet",
        "running: arm 'old' seed 2 cell e (attempt 3): no epoch finished in this attempt yet"]  # odd records: no crash


def test_status_says_where_an_unvalidated_epoch_stands():
    """Between validation points `ablate status` adds the step the attempt's current epoch has reached (reported
    every few minutes), with its inner steps and how long ago; a report of an epoch already validated adds
    nothing."""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from ablate.sweep.progress import running_lines

    def trial(**attrs):
        return SimpleNamespace(state=TrialState.RUNNING, user_attrs={"seed": 0, "attempt": 1, **attrs})

    point = {"epoch": 4, "phase": "vae", "rec": 94.0, "kl": 10.9, "nelbo": 104.9, "at": "2026-12-03T03:00:00+00:00"}
    trials = [trial(arm="aggressive", cell_id="fa8", progress={"epoch": 0, "phase": "vae", "step": 424,
                                                                "steps": 1315, "inner_steps": 21305,
                                                                "at": "2026-12-03T03:09:25+00:00"}),
              trial(arm="ae_fb", cell_id="b64", valid_curve=[point],
                    progress={"epoch": 5, "phase": "vae", "step": 7, "steps": 1315, "inner_steps": 0,
                              "at": "2026-12-03T03:11:00"}),  # no zone: UTC
              trial(arm="done", cell_id="c", valid_curve=[point],
                    progress={"epoch": 4, "phase": "vae", "step": 1315, "steps": 1315, "at": "2026-12-03T02:59:00"}),
              trial(arm="odd", cell_id="d", progress={"epoch": "x"})]
    ledger = SimpleNamespace(trials=lambda states: trials, is_live=lambda t: True)
    now = datetime(2026, 12, 3, 3, 11, 5, tzinfo=timezone.utc)
    assert running_lines(ledger, now) == [
        "running: arm 'aggressive' seed 0 cell fa8 (attempt 1): no epoch finished in this attempt yet; "
        "epoch 1 [vae]: step 424 of 1,315 (21,305 inner steps), 1m40s ago",
        "running: arm 'ae_fb' seed 0 cell b64 (attempt 1): epoch 5 [vae] done: valid rec 94.00, KL 10.900, "
        "-ELBO 104.90; epoch 6 [vae]: step 7 of 1,315, 0m05s ago",
        "running: arm 'done' seed 0 cell c (attempt 1): epoch 5 [vae] done: valid rec 94.00, KL 10.900, "
        "-ELBO 104.90",
        "running: arm 'odd' seed 0 cell d (attempt 1): no epoch finished in this attempt yet"]
