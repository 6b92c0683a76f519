"""Sweeps on PostgreSQL (issue 15): three `ablate worker` processes share one study through Optuna's RDB storage on
a real server; one — posing as another machine, so only its silent heartbeat can tell it died — is SIGKILLed in
the middle of a cell. Every cell must end with exactly one successful result, and the killed cell must be finished
by another worker. Skipped where PostgreSQL is not installed (CI installs it and sets ABLATE_REQUIRE_POSTGRES=1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest

from postgres_server import find_binaries, postgres_server

STUDY = """\
study: pg
base:
  data: {name: synthetic, synthetic: {n_train: 600, n_valid: 60, n_test: 60}}
  model: {name: lstm, emb_dim: 16, enc_hidden: 32, dec_hidden: 32, nz: 4}
  train: {epochs: 4, batch_size: 32, device: cpu}
  eval: {iw_samples: 3, probe: false}
seeds: [0, 1, 2]
arms:
  - name: vanilla
    techniques: {}
  - name: free_bits
    techniques: {free_bits: {lambda_per_dim: 0.5}}
"""


def _require_postgres() -> None:
    if find_binaries() is None:
        if os.environ.get("ABLATE_REQUIRE_POSTGRES") == "1":
            pytest.fail("ABLATE_REQUIRE_POSTGRES=1 but PostgreSQL is not installed (apt-get install -y postgresql)")
        pytest.skip("PostgreSQL is not installed: apt-get install -y postgresql to run this test")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed: pip install 'ablate[postgres]'")


def _trials(url: str):
    import optuna

    storage = optuna.storages.RDBStorage(url)
    return optuna.load_study(study_name="pg", storage=storage).get_trials(deepcopy=False)


def test_three_workers_on_postgres_survive_one_killed_mid_cell(tmp_path):
    _require_postgres()
    study = tmp_path / "pg.yaml"
    study.write_text(STUDY)
    results = tmp_path / "results"
    with postgres_server() as url:
        env = {**os.environ, "ABLATE_STORAGE": url, "ABLATE_HEARTBEAT_SECONDS": "1", "HF_HUB_OFFLINE": "1"}
        cli = [sys.executable, "-m", "ablate"]
        queued = subprocess.run([*cli, "sweep", str(study), "--no-work", "--out", str(results), "-q"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert queued.returncode == 0, queued.stderr
        assert "6 queued now" in queued.stdout and "--no-work" in queued.stdout

        worker = [*cli, "worker", str(study), "--out", str(results), "--threads", "1", "-q"]
        doomed = subprocess.Popen(worker, env={**env, "ABLATE_HOST": "machine-b"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        others = [subprocess.Popen(worker, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                  for _ in range(2)]
        killed_cell = None
        deadline = time.time() + 240
        while killed_cell is None and time.time() < deadline:  # mid-cell: its first epoch reported, not its last
            for t in _trials(url):
                if t.state.name == "RUNNING" and t.user_attrs.get("host") == "machine-b" and t.intermediate_values:
                    os.kill(doomed.pid, signal.SIGKILL)
                    killed_cell = t.user_attrs["cell_id"]
                    break
            time.sleep(0.2)
        assert killed_cell is not None, "the doomed worker never got a cell under way"
        doomed.wait(timeout=30)
        for proc in others:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-3000:]
        trials = _trials(url)

    rows = pd.read_parquet(results / "pg" / "rows")
    ok = rows[rows["status"] == "ok"]
    assert sorted(Counter(ok["cell_id"]).values()) == [1] * 6  # every cell exactly one successful result
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(Counter(t.user_attrs["cell_id"] for t in complete).values()) == [1] * 6
    of_killed = [t for t in trials if t.user_attrs.get("cell_id") == killed_cell]
    died = [t for t in of_killed if t.state.name == "FAIL"]
    assert len(died) == 1 and died[0].user_attrs["error_class"] == "WorkerDied"
    assert "stopped sending heartbeats" in died[0].user_attrs["error_message"]
    finished = next(t for t in of_killed if t.state.name == "COMPLETE")
    assert finished.user_attrs["host"] != "machine-b" and finished.user_attrs["attempt"] == 2
    per_worker = Counter(t.user_attrs["pid"] for t in complete)
    print(f"cells per worker: {dict(per_worker)}; killed cell {killed_cell}: attempt 1 WorkerDied "
          f"(pid {died[0].user_attrs['pid']}, host machine-b), attempt 2 ok (pid {finished.user_attrs['pid']})")


def test_three_workers_ride_out_a_database_outage(tmp_path):
    """The server stops for 8 s — longer than the heartbeat grace (3 × 1 s) — while three workers are mid-cell,
    then comes back: every worker waits it out (one warning, then a note), none exits, and every cell ends with
    exactly one successful result and one COMPLETE trial; no attempt is reclaimed as dead (issue 27)."""
    _require_postgres()
    study = tmp_path / "pg.yaml"
    study.write_text(STUDY.replace("epochs: 4", "epochs: 3"))
    results = tmp_path / "results"
    with postgres_server() as url:
        env = {**os.environ, "ABLATE_STORAGE": url, "ABLATE_HEARTBEAT_SECONDS": "1", "HF_HUB_OFFLINE": "1",
               "ABLATE_STORAGE_PATIENCE": "120"}
        cli = [sys.executable, "-m", "ablate"]
        queued = subprocess.run([*cli, "sweep", str(study), "--no-work", "--out", str(results), "-q"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert queued.returncode == 0, queued.stderr
        worker = [*cli, "worker", str(study), "--out", str(results), "--threads", "1"]
        workers = [subprocess.Popen(worker, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for _ in range(3)]
        deadline = time.time() + 240
        while time.time() < deadline and not any(t.state.name == "RUNNING" and t.intermediate_values
                                                 for t in _trials(url)):
            time.sleep(0.2)
        url.stop()
        time.sleep(8.0)
        url.start()
        outputs = [proc.communicate(timeout=600) for proc in workers]
        trials = _trials(url)
    for proc, (_, err) in zip(workers, outputs):
        assert proc.returncode == 0, err.decode()[-3000:]
    said = "".join(err.decode() for _, err in outputs)
    assert "unreachable (OperationalError); waiting for it, up to 120 s" in said and "reachable again" in said
    rows = pd.read_parquet(results / "pg" / "rows")
    assert sorted(Counter(rows[rows["status"] == "ok"]["cell_id"]).values()) == [1] * 6
    assert len(rows) == 6  # no failed attempt either
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 6
