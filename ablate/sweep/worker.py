"""One sweep worker: pop a queued cell from the ledger, run it (`ablate.engine.run.execute`), end its trial, and on a
failure that a retry could change queue the next attempt. `ablate worker` runs this until the queue is empty."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optuna.trial import TrialState

from ablate.core.config import ConfigError, config_hash
from ablate.core.config_reading import build_config
from ablate.results.layout import StudyFolder, result_stem
from ablate.core.log import LOG
from ablate.results.rows import write_results_table
from ablate.sweep.folder import resolve_target
from ablate.sweep import search
from ablate.results.safe_files import remove_owned
from ablate.sweep.attempts import has_ok_result
from ablate.sweep.ledger import Ledger
from ablate.sweep.storage import StorageUnavailable
from ablate.engine.tensorboard_log import check_available

# failures a retry cannot change (same config, same seed, same data): not retried
DETERMINISTIC_FAILURES = {"TrainingDiverged", "ConfigError"}
DRAIN_POLL_SECONDS = 1.0
DEVICE_ENV = "ABLATE_WORKER_DEVICE"  # the device a worker was started for (--devices), recorded in each row


# ---------------------------------------------------------------- one worker


@dataclass
class CellResult:
    cell_id: str
    attempt: int
    ok: bool
    error: str = ""
    retried: bool = False


def result_line(row: dict[str, Any], label: str) -> str:
    """One line per finished cell: '<arm> seed <n>: done: test NLL …, KL …, MI …, AU … (train …, eval …;
    cell <id> a<attempt>)', or its failure."""
    from ablate.core.progress import format_seconds

    where = f"cell {row.get('cell_id')} a{row.get('attempt')}"
    if row.get("status") != "ok":
        return f"{label}: failed: {row.get('error_class')}: {str(row.get('error_message') or '')[:160]} ({where})"
    split = next((s for s in ("test", "valid") if f"{s}.nll" in row), "test")
    values = ", ".join(f"{name} {row[f'{split}.{key}']:{spec}}" for name, key, spec in
                       (("NLL", "nll", ".2f"), ("KL", "kl", ".2f"), ("MI", "mi", ".2f"), ("AU", "au", ".0f"))
                       if isinstance(row.get(f"{split}.{key}"), (int, float)))
    times = ", ".join(f"{part} {format_seconds(row[f'{part}_seconds'])}" for part in ("train", "eval")
                      if isinstance(row.get(f"{part}_seconds"), (int, float)))
    return f"{label}: done: {split} {values} ({times}; {where})"


def run_one(ledger: Ledger, trial: Any, progress: bool = False, fail_fast: bool = False,
            tensorboard: Path | None = None) -> CellResult:
    """Run a claimed trial's cell and end the trial; queue a retry on failure while attempts remain."""
    from ablate.engine.run import cell_label, execute

    attrs = trial.user_attrs
    cell_id, attempt = attrs["cell_id"], int(attrs.get("attempt", 1))
    folder = ledger.folder
    if has_ok_result(folder, cell_id):  # a duplicate queue entry (e.g. two coordinators raced): never run twice
        ledger.complete(trial, None, note="skipped: the cell already has an ok result")
        return CellResult(cell_id, attempt, ok=True)
    others = [t for t in ledger.by_cell().get(cell_id, []) if t.number != trial.number]
    if ledger.done_elsewhere(others) or any(t.state == TrialState.COMPLETE for t in others):
        ledger.complete(trial, None, note="skipped: another attempt of the cell completed")
        return CellResult(cell_id, attempt, ok=True)
    if any(t.state == TrialState.RUNNING and t.number < trial.number and ledger.is_live(t) for t in others):
        ledger.fail(trial, "Duplicate", "another worker holds an earlier attempt of this cell")
        return CellResult(cell_id, attempt, ok=False, error="Duplicate")
    try:
        config = build_config(json.loads(attrs["run_config"]), f"ledger trial {trial.number}")
    except (ConfigError, KeyError, ValueError) as error:
        ledger.fail(trial, "StaleCell", f"the queued config no longer validates: {error}")
        return CellResult(cell_id, attempt, ok=False, error=f"StaleCell: {error}")
    if config_hash(config) != cell_id:  # technique versions or defaults changed since it was queued
        message = (f"the queued config now hashes to {config_hash(config)}, not {cell_id} (code changed since "
                   "it was queued); run `ablate sweep` again to queue the current cells")
        ledger.fail(trial, "StaleCell", message)
        return CellResult(cell_id, attempt, ok=False, error=f"StaleCell: {message}")
    stem = result_stem(cell_id, attempt)
    LOG.debug(f"worker {os.getpid()}: cell {cell_id} attempt {attempt} (arm {attrs.get('arm', '')}, seed "
              f"{config.seed})")
    labels = {"study": ledger.name, "cell_id": cell_id, "arm": attrs.get("arm", ""), "attempt": attempt,
              "dataset": attrs.get("dataset"), "model": attrs.get("model"),
              "worker_device": os.environ.get(DEVICE_ENV), "search": attrs.get("search"),
              "search_objectives": attrs.get("search_objectives")}
    checkpoint = StudyFolder(folder).checkpoint(cell_id)
    try:
        curve: list[dict[str, Any]] = []
        with ledger.beating(trial):  # RDB storages: the heartbeat that tells other machines this worker lives
            outcome = execute(config, folder, run_id=f"{ledger.name}.{stem}", labels=labels, checkpoint=checkpoint,
                              progress=progress, save_model=True, file_stem=stem,
                              on_epoch=lambda point: ledger.report_epoch(trial, point, curve),
                              on_progress=lambda where: ledger.report_progress(trial, where),
                              tensorboard=tensorboard,
                              tensorboard_name=f"{ledger.name}/{attrs.get('arm') or 'arm'}/{stem}")
    except (KeyboardInterrupt, SystemExit):
        ledger.fail(trial, "Interrupted", "the worker was stopped (SIGINT/SIGTERM) during the attempt")
        raise
    except StorageUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - execute records training failures itself; this is the rest
        ledger.fail(trial, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        retried = not fail_fast and ledger.retry_if_allowed(trial)
        return CellResult(cell_id, attempt, ok=False, error=f"{type(exc).__name__}: {exc}", retried=retried)
    write_results_table(folder)  # the study's one table, current as each cell ends
    if outcome.ok:
        ledger.complete(trial, outcome.row)
        remove_owned(checkpoint, folder)
        LOG.info(result_line(outcome.row, cell_label(labels, config.seed)))
        return CellResult(cell_id, attempt, ok=True)
    row = outcome.row
    ledger.fail(trial, str(row.get("error_class")), str(row.get("error_message") or ""))
    deterministic = row.get("error_class") in DETERMINISTIC_FAILURES  # the same config would fail the same way
    retried = not fail_fast and not deterministic and ledger.retry_if_allowed(trial)
    LOG.info(result_line(row, cell_label(labels, config.seed)) + ("; queued again" if retried else ""))
    return CellResult(cell_id, attempt, ok=False, error=f"{row.get('error_class')}: {row.get('error_message')}",
                      retried=retried)


def work(ledger: Ledger, progress: bool = False, fail_fast: bool = False,
         on_result: Callable[[CellResult], None] | None = None, tensorboard: Path | None = None,
         drain: bool = False, arms: frozenset[str] | None = None) -> list[CellResult]:
    """Pull cells (of `arms` only, when given) until the queue is empty (or, with fail_fast, until the first
    failure). With `drain` (workers on an RDB storage, where no coordinator may be watching) a worker whose queue is
    empty stays while other attempts run: one whose heartbeat stops is reclaimed, and its retry taken, here."""
    done = []
    while True:
        trial = ledger.pop(arms)
        if trial is None:
            with ledger.lock():
                asked = search.step(ledger)  # the next points of searches whose trials ended
            if asked:
                continue
            if not drain:
                return done
            with ledger.lock():
                reclaimed = ledger.reclaim(retry=not fail_fast)
            if reclaimed:
                LOG.info(f"reclaimed {len(reclaimed)} attempt(s) of dead workers: "
                         + ", ".join(f"cell {t.user_attrs.get('cell_id')}" for t in reclaimed))
                continue
            if not ledger.trials((TrialState.RUNNING,)):
                return done
            time.sleep(DRAIN_POLL_SECONDS)
            continue
        result = run_one(ledger, trial, progress=progress, fail_fast=fail_fast, tensorboard=tensorboard)
        done.append(result)
        if on_result is not None:
            on_result(result)
        if fail_fast and not result.ok:
            return done


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_worker(target: str | Path, out: str | Path = "results", storage: str | None = None,
               threads: int | None = None, fail_fast: bool = False, progress: bool = False,
               tensorboard: str | Path | None = None, devices: list[str] | None = None,
               arms: list[str] | None = None) -> int:
    """`ablate worker STUDY`: pull cells of an already-queued study until its queue is empty; with `devices`, one
    worker process per device (each sees only its own GPU); with `arms`, only those arms' cells."""
    name, folder, study = resolve_target(target, out)
    storage = storage or (study.storage if study is not None else study_file_storage(folder))
    if arms is not None and study is not None:
        check_arms(arms, study.arms, f"{target}: study '{name}'")
    if devices:
        return _one_per_device(target, out, storage, devices, threads, fail_fast, tensorboard, arms)
    ledger = Ledger.open_existing(name, folder, storage, write=True)
    if ledger is None:
        raise ConfigError(f"{target}: study '{name}' has no ledger under {folder}; run `ablate sweep` first")
    if arms is not None and study is None:  # a study folder: the arms its sweeps declared
        check_arms(arms, ledger.known_arms(), f"{target}: study '{name}'")
    signal.signal(signal.SIGTERM, _raise_exit)
    set_threads(threads)
    if tensorboard is not None:
        check_available()
    results = work(ledger, progress=progress, fail_fast=fail_fast,
                   tensorboard=Path(tensorboard) if tensorboard is not None else None, drain=ledger.heartbeats,
                   arms=frozenset(arms) if arms is not None else None)
    return 1 if fail_fast and any(not r.ok for r in results) else 0


def parse_arms(text: str | None) -> list[str] | None:
    """--arms a,b → ["a", "b"] (None: every arm)."""
    if text is None:
        return None
    arms = [a.strip() for a in text.split(",") if a.strip()]
    if not arms:
        raise ConfigError(f"--arms {text!r}: no arm named; give arm names, comma-separated, e.g. --arms "
                          "vanilla,free_bits")
    return arms


def check_arms(arms: list[str], known: list[str], where: str) -> None:
    """One line naming the unknown arm and the study's arms, before anything is queued or run."""
    unknown = [a for a in arms if a not in known]
    if unknown:
        raise ConfigError(f"--arms: {where} has no arm {unknown[0]!r}; its arms: {', '.join(known) or 'none yet'}")


def parse_devices(text: str | None) -> list[str] | None:
    """--devices cuda:0,cuda:1,cpu → one worker process per entry (Optuna's FAQ: one process per device)."""
    if text is None:
        return None
    devices = [d.strip() for d in text.split(",") if d.strip()]
    bad = next((d for d in devices if not re.fullmatch(r"cpu|mps|cuda:\d{1,3}", d)), None)
    if bad is not None or not devices:
        raise ConfigError(f"--devices {text}: {f'{bad!r} is not a device' if bad else 'no device'}; give cuda:N, cpu "
                          "or mps, comma-separated, e.g. --devices cuda:0,cuda:1")
    return devices


def device_env(device: str) -> dict[str, str]:
    """A worker process's environment for its device: only that GPU visible (so `train.device: auto` finds it),
    none for cpu; the device recorded in each row it writes."""
    env = {DEVICE_ENV: device}
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    elif device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def study_file_storage(folder: Path) -> str | None:
    """The storage a study folder's copy of its study file names (None when none, or unreadable)."""
    from ablate.core.config_reading import read_yaml

    try:
        value = read_yaml(StudyFolder(folder).study_yaml).get("storage")
    except ConfigError:
        return None
    return value if isinstance(value, str) else None


def _one_per_device(target: str | Path, out: str | Path, storage: str | None, devices: list[str],
                    threads: int | None, fail_fast: bool, tensorboard: str | Path | None,
                    arms: list[str] | None = None) -> int:
    """Start `ablate worker TARGET` once per device and wait for them all (the storage by environment)."""
    import subprocess
    import sys

    from ablate.core.log import current_verbosity, verbosity_flag
    from ablate.sweep.storage import STORAGE_ENV, is_sqlite, redact

    if is_sqlite(storage) and len(devices) > 1:
        raise ConfigError(f"--storage {redact(str(storage))}: SQLite is for one process only; use PostgreSQL or "
                          "MySQL for several workers")
    procs = []
    for device in devices:
        command = [sys.executable, "-m", "ablate", "worker", str(target), "--out", str(out), "--no-progress",
                   *verbosity_flag(current_verbosity()), *(["--threads", str(threads)] if threads else []),
                   *(["--fail-fast"] if fail_fast else []),
                   *(["--arms", ",".join(arms)] if arms is not None else []),
                   *(["--tensorboard", str(Path(tensorboard).resolve())] if tensorboard is not None else [])]
        env = {**os.environ, **device_env(device)}
        env.pop(STORAGE_ENV, None)
        if storage:
            env[STORAGE_ENV] = storage  # by environment, never argv
        procs.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL))
    try:
        return max(proc.wait() for proc in procs)
    except (KeyboardInterrupt, SystemExit):
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        raise


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
