"""The sweep: a coordinator that queues a study's missing cells in the ledger, and workers that run them.

`ablate sweep STUDY --jobs N`
 1. loads and validates the whole study (nothing is written when it is malformed);
 2. writes the study folder (study.yaml, study.json, manifest.parquet; see .notes/CONTRACTS.md);
 3. under the ledger lock: reclaims the attempts of dead workers, then queues every cell with no ok result and
    no live attempt (ablate.sweep.ledger);
 4. runs workers until the queue is empty: with N = 1 the worker runs in this process (the run's own progress
    bar shows under the sweep's); with N > 1 it starts N `ablate worker` processes, each with
    max(1, cores // N) torch threads (one per GPU when there are GPUs: CUDA_VISIBLE_DEVICES), replaces a worker
    that dies (its attempt is reclaimed and retried) and stops them all at the first failure with --fail-fast;
 5. prints the per-arm outcome. Exit status: 0 when every cell has an ok result, 1 otherwise.

A worker pops a cell, runs `ablate.run.execute` with labels (study, cell_id, arm, attempt, dataset, model), the
result stem `<cell_id>.a<attempt>` under runs/ and the checkpoint `checkpoints/<cell_id>.pt` (so a retried or
reclaimed cell continues from its last epoch), ends the trial, and on failure queues the next attempt while
attempts remain.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import pyarrow as pa

from ablate.config import ConfigError, build_config, config_hash, is_study, read_yaml
from ablate.layout import MODEL_NAME, StudyFolder
from ablate.outputs import check_writable
from ablate.preflight import check_configs_runnable
from ablate.sweep.ledger import (STORAGE_ENV, CellCounts, Ledger, ResultIndex, has_ok_result, now_iso, process_alive,
                                 redact, result_stem)
from ablate.sweep.study import NAME_RE, Study, load_study

POLL_SECONDS = 0.5
# failures a retry cannot change (same config, same seed, same data): not retried
DETERMINISTIC_FAILURES = {"TrainingDiverged", "ConfigError"}


# ---------------------------------------------------------------- the study folder


def study_folder(out: str | Path, name: str) -> Path:
    return Path(out) / name


def write_study_files(study: Study, folder: Path) -> None:
    """study.yaml (the file as run), study.json (name, file, hash, created) and manifest.parquet."""
    from ablate.outputs import write_text_atomic
    from ablate.results import write_atomic

    layout = StudyFolder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout.runs.mkdir(exist_ok=True)
    layout.checkpoints.mkdir(exist_ok=True)
    meta_path = layout.study_json
    created = now_iso()
    if meta_path.exists():
        try:
            created = json.loads(meta_path.read_text()).get("created", created)
        except (OSError, ValueError):
            pass
    meta = {"study": study.name, "study_file": str(study.path), "study_hash": study.hash, "created": created,
            "updated": now_iso(), "cells": len(study.cells)}
    write_text_atomic(layout.study_yaml, study.text)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    rows = study.manifest_rows()
    schema = pa.schema([("cell_id", pa.string()), ("arm", pa.string()), ("dataset", pa.string()),
                        ("model", pa.string()), ("seed", pa.int64()), ("settings", pa.string()),
                        ("config", pa.string())])
    table = pa.Table.from_pydict({f.name: [r[f.name] for r in rows] for f in schema}, schema=schema)
    write_atomic(table, layout.manifest)


def resolve_target(target: str | Path, out: str | Path) -> tuple[str, Path, Study | None]:
    """A study file (→ name, out/name, the Study) or a study folder holding study.json (→ name, folder, None)."""
    target = Path(target)
    if target.is_dir():
        meta = StudyFolder(target).study_json
        if not meta.exists():
            raise ConfigError(f"{target}: not a study folder (no study.json); give the study YAML file")
        try:
            name = json.loads(meta.read_text(encoding="utf-8"))["study"]
        except (OSError, ValueError, KeyError, TypeError):
            name = None
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{meta}: not a study record ablate wrote (no valid 'study' name); give the study "
                              "YAML file")
        return name, target, None
    study = load_study(target)
    return study.name, study_folder(out, study.name), study


# ---------------------------------------------------------------- one worker


@dataclass
class CellResult:
    cell_id: str
    attempt: int
    ok: bool
    error: str = ""
    retried: bool = False


def run_one(ledger: Ledger, trial: Any, progress: bool = False, fail_fast: bool = False) -> CellResult:
    """Run a claimed trial's cell and end the trial; queue a retry on failure while attempts remain."""
    from ablate.run import execute

    attrs = trial.user_attrs
    cell_id, attempt = attrs["cell_id"], int(attrs.get("attempt", 1))
    folder = ledger.folder
    runs = StudyFolder(folder).runs
    if has_ok_result(runs, cell_id):  # a duplicate queue entry (e.g. two coordinators raced): never run twice
        ledger.complete(trial, None, note="skipped: the cell already has an ok result")
        return CellResult(cell_id, attempt, ok=True)
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
    labels = {"study": ledger.name, "cell_id": cell_id, "arm": attrs.get("arm", ""), "attempt": attempt,
              "dataset": attrs.get("dataset"), "model": attrs.get("model")}
    checkpoint = StudyFolder(folder).checkpoint(cell_id)
    try:
        outcome = execute(config, runs, run_id=f"{ledger.name}.{stem}", labels=labels, checkpoint=checkpoint,
                          progress=progress, save_model=True, file_stem=stem)
    except (KeyboardInterrupt, SystemExit):
        ledger.fail(trial, "Interrupted", "the worker was stopped (SIGINT/SIGTERM) during the attempt")
        raise
    except Exception as exc:  # noqa: BLE001 - execute records training failures itself; this is the rest
        ledger.fail(trial, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        retried = not fail_fast and ledger.retry_if_allowed(trial)
        return CellResult(cell_id, attempt, ok=False, error=f"{type(exc).__name__}: {exc}", retried=retried)
    if outcome.ok:
        ledger.complete(trial, outcome.row)
        checkpoint.unlink(missing_ok=True)
        return CellResult(cell_id, attempt, ok=True)
    row = outcome.row
    ledger.fail(trial, str(row.get("error_class")), str(row.get("error_message") or ""))
    deterministic = row.get("error_class") in DETERMINISTIC_FAILURES  # the same config would fail the same way
    retried = not fail_fast and not deterministic and ledger.retry_if_allowed(trial)
    return CellResult(cell_id, attempt, ok=False, error=f"{row.get('error_class')}: {row.get('error_message')}",
                      retried=retried)


def work(ledger: Ledger, progress: bool = False, fail_fast: bool = False,
         on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Pull cells until the queue is empty (or, with fail_fast, until the first failure)."""
    done = []
    while True:
        trial = ledger.pop()
        if trial is None:
            return done
        result = run_one(ledger, trial, progress=progress, fail_fast=fail_fast)
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
               threads: int | None = None, fail_fast: bool = False, progress: bool = False) -> int:
    """`ablate worker STUDY`: pull cells of an already-queued study until its queue is empty."""
    name, folder, _ = resolve_target(target, out)
    ledger = Ledger.open_existing(name, folder, storage)
    if ledger is None:
        raise ConfigError(f"{target}: study '{name}' has no ledger under {folder}; run `ablate sweep` first")
    signal.signal(signal.SIGTERM, _raise_exit)
    set_threads(threads)
    results = work(ledger, progress=progress, fail_fast=fail_fast)
    return 1 if fail_fast and any(not r.ok for r in results) else 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- counting and progress


def count_cells(ledger: Ledger | None, study: Study, results: ResultIndex | None = None
                ) -> dict[str, CellCounts]:
    """Per arm (per arm and model when the study has several models): expected / done / failed / running /
    waiting / pending (results files count as done)."""
    def key(arm: str, model: str) -> str:
        return f"{arm} [{model}]" if len(study.models) > 1 else arm

    counts = {key(arm, model): CellCounts() for arm in study.arms for model in study.models
              if any(c.arm == arm and c.model == model for c in study.cells)}
    grouped = ledger.by_cell() if ledger is not None else {}
    for cell in study.cells:
        row = counts[key(cell.arm, cell.model)]
        row.expected += 1
        ok_file = results.ok(cell.cell_id) if results is not None else False
        if ledger is None:
            state = "done" if ok_file else ("failed" if results and results.failed_attempts(cell.cell_id)
                                            else "pending")
        else:
            state = ledger.cell_state(grouped.get(cell.cell_id, []), ok_file)
        setattr(row, state, getattr(row, state) + 1)
    return counts


def total(counts: dict[str, CellCounts]) -> CellCounts:
    out = CellCounts()
    for row in counts.values():
        for key in vars(out):
            setattr(out, key, getattr(out, key) + getattr(row, key))
    return out


def format_counts(counts: dict[str, CellCounts]) -> str:
    width = max([len("arm"), len("total")] + [len(a) for a in counts]) + 2
    keys = ["expected", "done", "failed", "running", "waiting", "pending"]
    lines = [f"{'arm':<{width}}" + "".join(f"{k:>10}" for k in keys)]  # "arm [model]" when several models
    for arm, row in list(counts.items()) + [("total", total(counts))]:
        lines.append(f"{arm:<{width}}" + "".join(f"{getattr(row, k):>10}" for k in keys))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class SweepProgress:
    """One bar for the sweep: cells done/failed/total with an ETA (a tqdm bar on a terminal, lines otherwise)."""

    def __init__(self, total_cells: int, done: int, failed: int, enabled: bool, stream: TextIO | None = None):
        self.total, self.start_done, self.enabled = total_cells, done + failed, enabled
        self.started = time.perf_counter()
        self.stream = stream or sys.stderr
        self.last: tuple[int, int, int] | None = None
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_cells, initial=done + failed, desc="sweep", unit="cell", position=0,
                            dynamic_ncols=True, file=self.stream)

    def eta(self, finished: int) -> str:
        ran = finished - self.start_done
        if ran <= 0:
            return "?"
        rate = (time.perf_counter() - self.started) / ran
        return _duration(rate * (self.total - finished))

    def update(self, done: int, failed: int, running: int) -> None:
        if not self.enabled or (done, failed, running) == self.last:
            return
        self.last = (done, failed, running)
        finished = done + failed
        if self.bar is not None:
            self.bar.n = finished
            self.bar.set_postfix_str(f"done {done} failed {failed} running {running}", refresh=False)
            self.bar.refresh()
        else:
            print(f"sweep: {done} done, {failed} failed, {running} running of {self.total} cells; "
                  f"elapsed {_duration(time.perf_counter() - self.started)}, ETA {self.eta(finished)}",
                  file=self.stream, flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- the coordinator


def _gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        count = 0
    if count == 0:
        return []
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    """Torch threads of each of N workers so that N × threads ≤ cores."""
    return max(1, cores() // max(1, jobs))


def run_sweep(path: str | Path, jobs: int | None = None, storage: str | None = None, dry_run: bool = False,
              fail_fast: bool = False, max_attempts: int = 2, out: str | Path = "results", progress: bool = True,
              stream: TextIO | None = None) -> int:
    """`ablate sweep`: see the module docstring. Returns the exit status."""
    stream = stream or sys.stdout
    if Path(path).is_file() and not is_study(read_yaml(path)):
        raise ConfigError(f"{path}: a run config (no arms), not a study; run it with `ablate run {path}`")
    study = load_study(path)  # raises ConfigError before anything is written
    if max_attempts < 1:
        raise ConfigError(f"--max-attempts must be at least 1 (got {max_attempts})")
    folder = study_folder(out, study.name)
    gpus = _gpus()
    jobs = (len(gpus) or 1) if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1 (got {jobs})")
    if dry_run:
        return _dry_run(study, folder, storage, jobs, stream)
    check_configs_runnable(study.labelled_configs())  # data, devices, model folders: before anything is written
    check_writable(out, "--out")

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None  # stop workers as Ctrl-C does
    try:
        return _sweep(study, folder, jobs, gpus, storage, fail_fast, max_attempts, progress, stream)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _sweep(study: Study, folder: Path, jobs: int, gpus: list[str], storage: str | None, fail_fast: bool,
           max_attempts: int, progress: bool, stream: TextIO) -> int:
    started = time.perf_counter()
    ledger = Ledger.open(study.name, folder, storage)  # a storage that cannot be opened fails before the files
    write_study_files(study, folder)
    with ledger.lock():
        reclaimed = ledger.reclaim(retry=False)
        plan = ledger.sync(study.cells, 1 if fail_fast else max_attempts)
        removed = remove_orphans(ledger)
    if removed:
        print(f"removed {removed} file(s) of attempts that were killed before finishing (no result refers to them)",
              file=stream)
    print(f"{study.path}: study '{study.name}': {len(study.cells)} cells; {plan['done']} already done, "
          + (f"{plan['queued']} still queued from an earlier sweep, " if plan["queued"] else "")
          + (f"{plan['running']} running in other worker processes, " if plan["running"] else "")
          + f"{plan['enqueued']} queued now"
          + (f" ({len(reclaimed)} attempts of dead workers reclaimed)" if reclaimed else "")
          + f"; {_workers_text(jobs, gpus)}; results in {folder}",
          file=stream, flush=True)
    counts = total(count_cells(ledger, study, ResultIndex(ledger.runs)))
    bar = SweepProgress(len(study.cells), counts.done, counts.failed, enabled=progress)
    known_failures = {t.number for t in ledger.trials() if t.state.name == "FAIL"}
    stopped = False
    try:
        if plan["enqueued"] or plan["queued"] or plan["running"]:
            if jobs == 1:
                stopped = _work_here(ledger, study, bar, fail_fast, progress)
            else:
                stopped = _work_in_processes(ledger, study, bar, jobs, gpus, storage, fail_fast,
                                             known_failures)
    except KeyboardInterrupt:
        bar.close()
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    final = count_cells(ledger, study, ResultIndex(ledger.runs))
    bar.update(total(final).done, total(final).failed, total(final).running)
    bar.close()
    print(format_counts(final), file=stream)
    t = total(final)
    for line in failure_lines(ledger, study):
        print(line, file=stream)
    print(f"sweep '{study.name}': {t.done}/{t.expected} cells ok, {t.failed} failed, "
          f"{t.expected - t.done - t.failed} not finished; wall {_duration(time.perf_counter() - started)}"
          + ("; stopped at the first failure (--fail-fast)" if stopped else ""), file=stream, flush=True)
    return 0 if t.done == t.expected else 1


def failure_lines(ledger: Ledger, study: Study, limit: int = 20) -> list[str]:
    """Why each failed cell failed: its last attempt's error, one line per cell (the first `limit`)."""
    grouped = ledger.by_cell()
    lines = []
    for cell in study.cells:
        trials = grouped.get(cell.cell_id, [])
        if ledger.cell_state(trials, False) != "failed":
            continue
        last = max((t for t in trials if t.state.name == "FAIL"), key=lambda t: int(t.user_attrs.get("attempt", 0)))
        attrs = last.user_attrs
        lines.append(f"failed: arm '{cell.arm}' seed {cell.seed} ({cell.dataset}, {cell.model}) cell {cell.cell_id}, "
                     f"{attrs.get('attempt', '?')} attempt(s): {attrs.get('error_class', '?')}: "
                     f"{str(attrs.get('error_message', ''))[:200]}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more failed cells (ablate report lists them all)"]
    return lines


def remove_orphans(ledger: Ledger) -> int:
    """Model files of attempts that have no ok result and are not running (killed between saving the model and
    writing the row), and checkpoints of cells that are done; call under the ledger lock."""
    results = ResultIndex(ledger.runs)
    live = {(t.user_attrs.get("cell_id"), int(t.user_attrs.get("attempt", 1))) for t in ledger.trials()
            if ledger.is_live(t)}
    removed = 0
    for path in ledger.runs.glob("*.a*.model.pt") if ledger.runs.is_dir() else []:
        match = MODEL_NAME.match(path.name)
        if match and (match["cell"], int(match["attempt"])) not in live and \
                results.status(match["cell"], int(match["attempt"])) != "ok":
            path.unlink(missing_ok=True)
            removed += 1
    checkpoints = StudyFolder(ledger.folder).checkpoints
    for path in checkpoints.glob("*.pt") if checkpoints.is_dir() else []:
        if results.ok(path.stem):
            path.unlink(missing_ok=True)
            removed += 1
    for path in list(ledger.runs.glob(".*.tmp")) + list(checkpoints.glob(".*.tmp")):
        pid = re.search(r"\.(\d+)\.tmp$", path.name)  # a writer's temporary file: gone with its process
        if pid and not process_alive(int(pid[1])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _workers_text(jobs: int, gpus: list[str]) -> str:
    if jobs == 1:
        return "1 worker in this process" + (f" on GPU {gpus[0]}" if gpus else "")
    where = f", GPUs {','.join(gpus)}" if gpus else ""
    return f"{jobs} worker processes × {threads_per_worker(jobs)} torch thread(s){where}"


def _dry_run(study: Study, folder: Path, storage: str | None, jobs: int, stream: TextIO) -> int:
    """Print the cell counts and what a sweep would do; write nothing."""
    print(study.summary(), file=stream)
    results = ResultIndex(StudyFolder(folder).runs)
    ledger = Ledger.open_existing(study.name, folder, storage) if storage is None else None
    counts = total(count_cells(ledger, study, results))
    todo = counts.expected - counts.done - counts.running - counts.waiting
    print(f"dry run: {counts.done} cells done, {counts.running + counts.waiting} queued or running, "
          f"{todo} would be queued; {_workers_text(jobs, _gpus())}; results in {folder}", file=stream)
    return 0


def _counts_now(ledger: Ledger, study: Study, ok_at_start: set[str]) -> CellCounts:
    grouped = ledger.by_cell()
    out = CellCounts()
    for cell in study.cells:
        state = ledger.cell_state(grouped.get(cell.cell_id, []), cell.cell_id in ok_at_start)
        setattr(out, state, getattr(out, state) + 1)
    return out


def _work_here(ledger: Ledger, study: Study, bar: SweepProgress, fail_fast: bool, progress: bool) -> bool:
    results = ResultIndex(ledger.runs)
    ok_at_start = {c.cell_id for c in study.cells if results.ok(c.cell_id)}

    def after(result: CellResult | None) -> None:
        counts = _counts_now(ledger, study, ok_at_start)
        bar.update(counts.done, counts.failed, counts.running)

    run_bars = progress and sys.stderr.isatty()
    while True:
        outcomes = work(ledger, progress=run_bars, fail_fast=fail_fast, on_result=after)
        if fail_fast and any(not r.ok for r in outcomes):
            return True
        # the queue is empty; attempts still running elsewhere (another sweep's workers, or workers of a killed
        # sweep that are still dying) are waited for, and taken over if their process is gone
        with ledger.lock():
            ledger.reclaim(retry=not fail_fast)
        trials = ledger.trials()
        if any(t.state.name == "WAITING" for t in trials):
            continue
        if not _running_elsewhere(ledger, study, trials):
            return False
        after(None)
        time.sleep(POLL_SECONDS)


def _running_elsewhere(ledger: Ledger, study: Study, trials: list[Any]) -> bool:
    cells = {c.cell_id for c in study.cells}
    return any(t.state.name == "RUNNING" and t.user_attrs.get("cell_id") in cells and ledger.is_live(t)
               for t in trials)


def _work_in_processes(ledger: Ledger, study: Study, bar: SweepProgress, jobs: int, gpus: list[str],
                       storage: str | None, fail_fast: bool, known_failures: set[int]) -> bool:
    """Start N `ablate worker` processes; replace dead ones while work waits; stop all at a failure if asked."""
    results = ResultIndex(ledger.runs)
    ok_at_start = {c.cell_id for c in study.cells if results.ok(c.cell_id)}
    threads = threads_per_worker(jobs)
    procs: list[subprocess.Popen | None] = [None] * jobs
    spawned = crashes_in_a_row = 0
    last_marker = -1
    max_spawns = jobs + 3 * len(study.cells)

    def spawn(slot: int) -> subprocess.Popen:
        nonlocal spawned
        spawned += 1
        command = [sys.executable, "-m", "ablate.cli", "worker", str(ledger.folder), "--quiet"]
        if threads:
            command += ["--threads", str(threads)]
        if fail_fast:
            command.append("--fail-fast")
        env = dict(os.environ)
        env.pop(STORAGE_ENV, None)
        if storage:  # by environment, never argv: `ps` shows a command line to every local user
            env[STORAGE_ENV] = storage
        if threads:
            env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
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
            if died:
                with ledger.lock():
                    ledger.reclaim(retry=not fail_fast)
            trials = ledger.trials()
            counts = _counts_now(ledger, study, ok_at_start)
            bar.update(counts.done, counts.failed, counts.running)
            new_failures = [t for t in trials if t.state.name == "FAIL" and t.number not in known_failures
                            and t.user_attrs.get("error_class") != "Interrupted"]
            if fail_fast and new_failures:
                stopped = True
                break
            waiting = sum(t.state.name == "WAITING" for t in trials)
            alive = [p for p in procs if p is not None]
            if died:  # a worker that dies again before any cell finishes counts towards giving up
                marker = counts.done + counts.failed
                crashes_in_a_row = crashes_in_a_row + 1 if marker == last_marker else 1
                last_marker = marker
            if crashes_in_a_row >= jobs + 2:
                print("workers keep dying before finishing any cell; stopping (see their messages above)",
                      file=sys.stderr)
                stopped = True
                break
            for slot in range(jobs):
                if procs[slot] is None and waiting > len(alive) - counts.running and spawned < max_spawns:
                    procs[slot] = spawn(slot)
                    alive.append(procs[slot])
            if not any(p is not None for p in procs):
                with ledger.lock():  # every worker is gone: nothing of ours can still be running
                    ledger.reclaim(retry=not fail_fast)
                waiting = sum(t.state.name == "WAITING" for t in ledger.trials())
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


def status_text(target: str | Path, out: str | Path = "results", storage: str | None = None) -> str:
    """`ablate status STUDY`: expected / done / failed / running / waiting / pending per arm."""
    name, folder, study = resolve_target(target, out)
    if study is None:
        study = load_study(StudyFolder(folder).study_yaml)
        study.name = name
    ledger = Ledger.open_existing(name, folder, storage)
    results = ResultIndex(StudyFolder(folder).runs)
    counts = count_cells(ledger, study, results)
    head = f"study '{name}' ({folder}): " + ("no ledger yet (never swept)" if ledger is None else
                                              f"ledger {'journal' if storage is None else redact(storage)}")
    lines = [head, format_counts(counts)]
    t = total(counts)
    if t.pending and ledger is not None:
        lines.append(f"{t.pending} cell(s) pending: not queued, interrupted, or their worker died; "
                     "`ablate sweep` runs them")
    return "\n".join(lines)

