"""The sweep: a coordinator that queues a study's missing cells in the ledger, and workers that run them.

`ablate sweep STUDY --jobs N`
 1. loads and validates the whole study (nothing is written when it is malformed);
 2. writes the study folder (study.yaml, study.json, manifest.parquet; see ARCHITECTURE.md);
 3. under the ledger lock: reclaims the attempts of dead workers, then queues every cell with no ok result and
    no live attempt (ablate.sweep.ledger);
 4. runs workers until the queue is empty (N: --jobs, else $ABLATE_JOBS, else one per GPU, or on a CPU one per
    core and at most one per queued cell: ablate.sweep.worker_count): with N = 1 the worker runs in this process
    (the run's own progress bar shows under the sweep's); with N > 1 it starts N `ablate worker` processes, each with
    max(1, cores // N) torch threads (one per GPU when there are GPUs: CUDA_VISIBLE_DEVICES), replaces a worker
    that dies (its attempt is reclaimed and retried) and stops them all at the first failure with --fail-fast;
 5. prints the per-arm outcome. Exit status: 0 when every cell has an ok result, 1 otherwise.

A worker (ablate.sweep.worker) pops a cell, runs `ablate.engine.run.execute` with labels (study, cell_id, arm, attempt,
dataset, model), the result stem `<cell_id>.a<attempt>` under rows/, curves/ and models/, and the checkpoint
`checkpoints/<cell_id>.pt` (so a retried or reclaimed cell continues from its last epoch), ends the trial, and
on a failure a retry could change queues the next attempt while attempts remain. Counting and progress:
ablate.sweep.progress; the study folder: ablate.sweep.folder; search arms: ablate.sweep.search.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from optuna.trial import TrialState

from ablate.core.config import ConfigError
from ablate.core.config_reading import is_study, read_yaml
from ablate.results.layout import MODEL_NAME, StudyFolder
from ablate.core.progress import format_seconds
from ablate.core.log import LOG, current_verbosity, verbosity_flag
from ablate.results.safe_files import check_writable, remove_owned
from ablate.engine.preflight import check_configs_runnable
from ablate.results.rows import write_results_table
from ablate.sweep.folder import (cells_outside_the_study, recorded_overrides, resolve_target, study_folder,
                                 write_study_files)
from ablate.sweep.attempts import ResultIndex, process_alive
from ablate.sweep.ledger import Ledger
from ablate.sweep.storage import STORAGE_ENV, is_sqlite, redact
from ablate.sweep.progress import (SweepProgress, _counts_now, count_cells, failure_lines,
                                   format_counts, running_lines, total)
from ablate.sweep import search
from ablate.sweep.cells import Study
from ablate.sweep.study import load_study
from ablate.sweep.worker import CellResult, check_arms, device_env, work
from ablate.sweep.worker_count import default_jobs, gpus, jobs_from_environment, threads_per_worker
from ablate.engine.tensorboard_log import check_available

POLL_SECONDS = 0.5


# ---------------------------------------------------------------- the coordinator


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt



def check_storage_for(storage: str | None, processes: int) -> None:
    if is_sqlite(storage) and processes > 1:
        raise ConfigError(f"--storage {redact(str(storage))}: SQLite is for one process only ({processes} workers "
                          "asked); use the default journal file on one machine, or PostgreSQL/MySQL for several")


def run_sweep(path: str | Path, jobs: int | None = None, storage: str | None = None, dry_run: bool = False,
              fail_fast: bool = False, max_attempts: int = 2, out: str | Path = "results", progress: bool = True,
              stream: TextIO | None = None, overrides: list[str] | None = None,
              tensorboard: str | Path | None = None, devices: list[str] | None = None, no_work: bool = False,
              arms: list[str] | None = None) -> int:
    """`ablate sweep`: see the module docstring. Returns the exit status. `tensorboard`: a folder that gets each
    cell's event files (DIR/<study>/<arm>/<cell>.a<attempt>); `devices`: one worker process per device;
    `no_work`: queue the cells and stop (workers elsewhere run them); `arms`: queue and run only these arms' cells
    (the study's records stay whole; the other arms' cells keep their state)."""
    stream = stream or sys.stdout
    if Path(path).is_file() and not is_study(read_yaml(path)):
        raise ConfigError(f"{path}: a run config (no arms), not a study; run it with `ablate run {path}`")
    study = load_study(path, overrides)  # raises ConfigError before anything is written
    if arms is not None:
        check_arms(arms, study.arms, f"{path}: study '{study.name}'")
    if max_attempts < 1:
        raise ConfigError(f"--max-attempts must be at least 1 (got {max_attempts})")
    folder = study_folder(out, study.name)
    storage = storage or study.storage  # --storage or $ABLATE_STORAGE over the study file's own
    explicit_devices = devices is not None
    if devices is not None:
        if jobs is not None and jobs != len(devices):
            raise ConfigError(f"--jobs {jobs} and --devices ({len(devices)} devices) disagree; give one of them")
        jobs = len(devices)
    else:
        devices = [f"cuda:{g}" for g in gpus()]
    jobs = jobs_from_environment() if jobs is None else jobs  # None: the default, once the cells to run are known
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1 (got {jobs})")
    check_storage_for(storage, 1 if no_work or jobs is None else jobs)
    whole, study = study, (study.only_arms(arms) if arms is not None else study)
    if dry_run:
        return _dry_run(study, folder, storage, jobs, devices, stream)
    check_configs_runnable(study.labelled_configs())  # data, devices, model folders: before anything is written
    check_writable(out, "--out")
    if tensorboard is not None:
        check_available()
        check_writable(tensorboard, "--tensorboard")
        tensorboard = Path(tensorboard).resolve()  # workers may run elsewhere in the tree

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None  # stop workers as Ctrl-C does
    try:
        return _sweep(study, folder, jobs, devices, storage, fail_fast, max_attempts, progress, stream, tensorboard,
                      no_work, explicit_devices, whole=whole, arms=arms)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _sweep(study: Study, folder: Path, jobs: int, devices: list[str], storage: str | None, fail_fast: bool,
           max_attempts: int, progress: bool, stream: TextIO, tensorboard: Path | None = None,
           no_work: bool = False, explicit_devices: bool = False, whole: Study | None = None,
           arms: list[str] | None = None) -> int:
    """`study` is what this sweep queues and runs (narrowed by --arms); `whole` the study its records describe."""
    started = time.perf_counter()
    whole = whole or study
    ledger = Ledger.open(study.name, folder, storage)  # a storage that cannot be opened fails before the files
    before = recorded_overrides(folder) if StudyFolder(folder).study_json.exists() else None
    write_study_files(whole, folder)
    other = cells_outside_the_study(folder)
    if other and before is not None and before != study.overrides:
        LOG.warning(f"{folder}: swept before with {_overrides_text(before)}, now with "
                    f"{_overrides_text(study.overrides)}; the {len(other)} earlier cell(s)' rows stay beside the new "
                    "ones (`ablate results` shows the config columns that tell them apart; another --out keeps "
                    "them apart)")
    with ledger.lock():
        ledger.declare_arms(list(whole.arms))  # grid and search arms: the choices of the trials' "arm" param
        reclaimed = ledger.reclaim(retry=False)
        plan = ledger.sync(study.cells, 1 if fail_fast else max_attempts)
        search.register(ledger, study.searches, 1 if fail_fast else max_attempts)
        asked = search.step(ledger)  # each search's first trials (and what earlier sweeps' trials found)
        removed = remove_orphans(ledger)
    chosen = jobs is not None
    jobs = jobs or _default_jobs(study, plan["enqueued"] + plan["queued"], devices, storage)
    if removed:
        print(f"removed {removed} file(s) of attempts that were killed before finishing (no result refers to them)",
              file=stream)
    only = f" (arms {', '.join(study.arms)} of {len(whole.cells)} cells)" if arms is not None else ""
    print(f"{study.path}: study '{study.name}': {len(study.cells)} cells{only}; {plan['done']} already done, "
          + (f"{plan['queued']} still queued from an earlier sweep, " if plan["queued"] else "")
          + (f"{plan['running']} running in other worker processes, " if plan["running"] else "")
          + f"{plan['enqueued']} queued now"
          + (f", {asked} search trial(s) asked" if asked else "")
          + (f" ({len(reclaimed)} attempts of dead workers reclaimed)" if reclaimed else "")
          + ("" if no_work else f"; {_workers_text(jobs, devices, explicit_devices, chosen)}")
          + f"; results in {folder}",
          file=stream, flush=True)
    if no_work:
        where = f" --storage {redact(storage)}" if storage else ""
        only = f" --arms {','.join(arms)}" if arms is not None else ""
        print(f"queued only (--no-work); start workers with `ablate worker {study.path}{where}{only} "
              f"[--devices ...]` on each machine", file=stream)
        return 0
    counts = total(count_cells(ledger, study, ResultIndex(ledger.folder)))
    bar = SweepProgress(len(study.cells), counts.done, counts.failed, enabled=progress)
    known_failures = {t.number for t in ledger.trials() if t.state == TrialState.FAIL}
    stopped = False
    try:
        if plan["enqueued"] or plan["queued"] or plan["running"] or asked or search.pending(ledger):
            if jobs == 1 and not explicit_devices:  # else one process per device, whose environment selects it
                stopped = _work_here(ledger, study, bar, fail_fast, progress, tensorboard, arms)
            else:
                stopped = _work_in_processes(ledger, study, bar, jobs, devices, storage, fail_fast,
                                             known_failures, tensorboard, arms)
    except KeyboardInterrupt:
        bar.close()
        LOG.warning("interrupted; run the same command again to continue")
        return 130
    write_results_table(folder)  # complete now (workers rewrite it as their cells end)
    final = count_cells(ledger, study, ResultIndex(ledger.folder))
    bar.update(total(final).done, total(final).failed, total(final).running)
    bar.close()
    print(format_counts(final), file=stream)
    t = total(final)
    for line in failure_lines(ledger, study):
        print(line, file=stream)
    searching = search.progress_lines(ledger)
    for line in searching:
        print(line, file=stream)
    unfinished_search = search.pending(ledger)
    wall = format_seconds(time.perf_counter() - started, precise=True)
    print(f"sweep '{study.name}': {t.done}/{t.expected} cells ok, {t.failed} failed, "
          f"{t.expected - t.done - t.failed} not finished; wall {wall}"
          + ("; stopped at the first failure (--fail-fast)" if stopped else ""), file=stream, flush=True)
    return 0 if t.done == t.expected and not unfinished_search else 1


def remove_orphans(ledger: Ledger) -> int:
    """Model files of attempts that have no ok result and are not running (killed between saving the model and
    writing the row), and checkpoints of cells that are done; call under the ledger lock."""
    results = ResultIndex(ledger.folder)
    live = {(t.user_attrs.get("cell_id"), int(t.user_attrs.get("attempt", 1))) for t in ledger.trials()
            if ledger.is_live(t)}
    removed = 0
    layout = StudyFolder(ledger.folder)
    models = [p for folder in (layout.models, layout.legacy_runs) if folder.is_dir()
              for p in folder.glob("*.a*.model.pt")]
    for path in models:
        match = MODEL_NAME.match(path.name)
        if match and (match["cell"], int(match["attempt"])) not in live and \
                results.status(match["cell"], int(match["attempt"])) != "ok":
            removed += remove_owned(path, ledger.folder)
    checkpoints = layout.checkpoints
    for path in checkpoints.glob("*.pt") if checkpoints.is_dir() else []:
        if results.ok(path.stem):
            removed += remove_owned(path, ledger.folder)
    written = (layout.rows, layout.curves, layout.models, checkpoints)
    for path in [p for folder in written if folder.is_dir() for p in folder.glob(".*.tmp")]:
        pid = re.search(r"\.(\d+)\.tmp$", path.name)  # a writer's temporary file: gone with its process (and
        stale = time.time() - path.stat().st_mtime > 600  # old: a writer on another machine has another pid space)
        if pid and stale and not process_alive(int(pid[1])):
            removed += remove_owned(path, ledger.folder)
    return removed


def _overrides_text(overrides: list[str]) -> str:
    return " ".join(f"--set {o}" for o in overrides) if overrides else "no --set"


def _workers_text(jobs: int, devices: list[str], explicit: bool = False, chosen: bool = True) -> str:
    how = "" if chosen or devices else " (the default: one per core, at most one per cell; --jobs N to choose)"
    if jobs == 1 and not explicit:
        return "1 worker in this process" + (f" on {devices[0]}" if devices else "") + how
    where = f", devices {','.join(devices[slot % len(devices)] for slot in range(jobs))}" if devices else ""
    return f"{jobs} worker processes × {threads_per_worker(jobs)} torch thread(s){where}{how}"


def _default_jobs(study: Study, to_run: int, devices: list[str], storage: str | None) -> int:
    """ablate.sweep.worker_count.default_jobs for `to_run` queued cells (open-ended when the study has searches:
    they ask for trials as they go)."""
    return default_jobs(None if study.searches else to_run, devices, single_process=is_sqlite(storage))


def _dry_run(study: Study, folder: Path, storage: str | None, jobs: int | None, devices: list[str],
             stream: TextIO) -> int:
    """Print the cell counts and what a sweep would do; write nothing."""
    print(study.summary(), file=stream)
    results = ResultIndex(folder)
    ledger = Ledger.open_existing(study.name, folder, storage) if storage is None else None
    counts = total(count_cells(ledger, study, results))
    todo = counts.expected - counts.done - counts.running - counts.waiting
    chosen = jobs is not None
    jobs = jobs or _default_jobs(study, todo + counts.waiting, devices, storage)
    print(f"dry run: {counts.done} cells done, {counts.running + counts.waiting} queued or running, "
          f"{todo} would be queued; {_workers_text(jobs, devices, chosen=chosen)}; results in {folder}",
          file=stream)
    return 0


def _work_here(ledger: Ledger, study: Study, bar: SweepProgress, fail_fast: bool, progress: bool,
               tensorboard: Path | None = None, arms: list[str] | None = None) -> bool:
    results = ResultIndex(ledger.folder)
    ok_at_start = {c.cell_id for c in study.cells if results.ok(c.cell_id)}

    def after(result: CellResult | None) -> None:
        counts = _counts_now(ledger, study, ok_at_start)
        bar.update(counts.done, counts.failed, counts.running)

    run_bars = progress and sys.stderr.isatty()
    while True:
        outcomes = work(ledger, progress=run_bars, fail_fast=fail_fast, on_result=after, tensorboard=tensorboard,
                        arms=frozenset(arms) if arms is not None else None)
        if fail_fast and any(not r.ok for r in outcomes):
            return True
        # the queue is empty; attempts still running elsewhere (another sweep's workers, or workers of a killed
        # sweep that are still dying) are waited for, and taken over if their process is gone
        with ledger.lock():
            ledger.reclaim(retry=not fail_fast)
        trials = ledger.trials()
        if _waiting(trials, arms):
            continue
        if not _running_elsewhere(ledger, study, trials):
            return False
        after(None)
        time.sleep(POLL_SECONDS)


def _waiting(trials: list[Any], arms: list[str] | None) -> int:
    """Queued attempts this sweep's workers would take (of `arms` only, when the sweep has --arms)."""
    return sum(t.state == TrialState.WAITING and (arms is None or t.user_attrs.get("arm") in arms) for t in trials)


def _running_elsewhere(ledger: Ledger, study: Study, trials: list[Any]) -> bool:
    cells = {c.cell_id for c in study.cells}
    return any(t.state == TrialState.RUNNING and (t.user_attrs.get("cell_id") in cells or t.user_attrs.get("search"))
               and ledger.is_live(t) for t in trials)


def _work_in_processes(ledger: Ledger, study: Study, bar: SweepProgress, jobs: int, devices: list[str],
                       storage: str | None, fail_fast: bool, known_failures: set[int],
                       tensorboard: Path | None = None, arms: list[str] | None = None) -> bool:
    """Start N `ablate worker` processes; replace dead ones while work waits; stop all at a failure if asked."""
    results = ResultIndex(ledger.folder)
    ok_at_start = {c.cell_id for c in study.cells if results.ok(c.cell_id)}
    threads = threads_per_worker(jobs)
    procs: list[subprocess.Popen | None] = [None] * jobs
    spawned = crashes_in_a_row = 0
    last_marker = -1
    max_spawns = jobs + 3 * len(study.cells)

    def spawn(slot: int) -> subprocess.Popen:
        nonlocal spawned
        spawned += 1
        command = [sys.executable, "-m", "ablate", "worker", str(ledger.folder), "--no-progress",
                   *verbosity_flag(current_verbosity())]
        if threads:
            command += ["--threads", str(threads)]
        if fail_fast:
            command.append("--fail-fast")
        if tensorboard is not None:
            command += ["--tensorboard", str(tensorboard)]
        if arms is not None:
            command += ["--arms", ",".join(arms)]
        env = dict(os.environ)
        env.pop(STORAGE_ENV, None)
        if storage:  # by environment, never argv: `ps` shows a command line to every local user
            env[STORAGE_ENV] = storage
        if threads:
            env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        if devices:
            env.update(device_env(devices[slot % len(devices)]))
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)

    for slot in range(jobs):
        procs[slot] = spawn(slot)
    stopped = False
    try:
        while True:
            time.sleep(POLL_SECONDS)
            died = False
            for slot, proc in enumerate(procs):
                if proc is not None and proc.poll() is not None:
                    if proc.returncode != 0 and not (fail_fast and proc.returncode == 1):
                        died = True
                        bar.write(f"worker {proc.pid} exited with status {proc.returncode}; its attempt is "
                                  "reclaimed and retried")
                    procs[slot] = None
            if died or study.searches:  # the ledger lock only when there is something to decide
                with ledger.lock():
                    if died:
                        ledger.reclaim(retry=not fail_fast)
                    if study.searches:
                        search.step(ledger)  # tell finished search trials, ask the next ones
            trials = ledger.trials()
            counts = _counts_now(ledger, study, ok_at_start)
            bar.update(counts.done, counts.failed, counts.running)
            new_failures = [t for t in trials if t.state == TrialState.FAIL and t.number not in known_failures
                            and t.user_attrs.get("error_class") != "Interrupted"]
            if fail_fast and new_failures:
                stopped = True
                break
            waiting = _waiting(trials, arms)
            alive = [p for p in procs if p is not None]
            if died:  # a worker that dies again before any cell finishes counts towards giving up
                marker = counts.done + counts.failed
                crashes_in_a_row = crashes_in_a_row + 1 if marker == last_marker else 1
                last_marker = marker
            if crashes_in_a_row >= jobs + 2:
                LOG.error("workers keep dying before finishing any cell; stopping (see their messages above)")
                stopped = True
                break
            for slot in range(jobs):
                if procs[slot] is None and waiting > len(alive) - counts.running and spawned < max_spawns:
                    procs[slot] = spawn(slot)
                    alive.append(procs[slot])
            if not any(p is not None for p in procs):
                with ledger.lock():  # every worker is gone: nothing of ours can still be running
                    ledger.reclaim(retry=not fail_fast)
                waiting = _waiting(ledger.trials(), arms)
                if waiting and spawned < max_spawns:
                    procs[0] = spawn(0)
                    continue
                if waiting:
                    bar.write("too many worker restarts; stopping")
                    break
                if not _running_elsewhere(ledger, study, ledger.trials()):
                    break  # else: wait for attempts running elsewhere (see _work_here)
    finally:
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return stopped


# ---------------------------------------------------------------- status


def status_text(target: str | Path, out: str | Path = "results", storage: str | None = None,
                overrides: list[str] | None = None) -> str:
    """`ablate status STUDY`: expected / done / failed / running / waiting / pending per arm — of the study as it
    was swept: a study folder, or a study file without --set, counts with the --set overrides its folder recorded
    (a sweep with --quick made other cells than the file alone describes)."""
    name, folder, study = resolve_target(target, out, overrides)
    recorded = recorded_overrides(folder)
    if study is None:
        study = load_study(StudyFolder(folder).study_yaml, recorded)
        study.name = name
    elif not overrides and recorded:
        study = load_study(target, recorded)
    storage = storage or study.storage
    ledger = Ledger.open_existing(name, folder, storage)
    results = ResultIndex(folder)
    counts = count_cells(ledger, study, results)
    head = f"study '{name}' ({folder}): " + ("no ledger yet (never swept)" if ledger is None else
                                              f"ledger {'journal' if storage is None else redact(storage)}")
    if study.overrides:
        head += f"; counted with {_overrides_text(study.overrides)}" + ("" if overrides else " (as it was swept)")
    lines = [head, format_counts(counts)] + (search.progress_lines(ledger) + running_lines(ledger)
                                              if ledger is not None else [])
    t = total(counts)
    other = cells_outside_the_study(folder)
    if other:
        lines.append(f"{len(other)} more cell(s) with results that the study as now defined does not have (swept "
                     "with other --set overrides, or before an edit); `ablate results` lists them too")
    if t.pending and ledger is not None:
        lines.append(f"{t.pending} cell(s) pending: not queued, interrupted, or their worker died; "
                     "`ablate sweep` runs them")
    return "\n".join(lines)

