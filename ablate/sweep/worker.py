"""One sweep worker: pop a queued cell from the ledger, run it (`ablate.run.execute`), end its trial, and on a
failure that a retry could change queue the next attempt. `ablate worker` runs this until the queue is empty."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from ablate.config import ConfigError, build_config, config_hash
from ablate.layout import StudyFolder, result_stem
from ablate.log import LOG
from ablate.tensorboard_log import check_available
from ablate.results import write_results_table
from ablate.sweep.folder import resolve_target
from ablate.sweep.ledger import Ledger, has_ok_result

# failures a retry cannot change (same config, same seed, same data): not retried
DETERMINISTIC_FAILURES = {"TrainingDiverged", "ConfigError"}
DEVICE_ENV = "ABLATE_WORKER_DEVICE"  # the device a worker was started for (--devices), recorded in each row


# ---------------------------------------------------------------- one worker


@dataclass
class CellResult:
    cell_id: str
    attempt: int
    ok: bool
    error: str = ""
    retried: bool = False


def run_one(ledger: Ledger, trial: Any, progress: bool = False, fail_fast: bool = False,
            tensorboard: Path | None = None) -> CellResult:
    """Run a claimed trial's cell and end the trial; queue a retry on failure while attempts remain."""
    from ablate.run import execute

    attrs = trial.user_attrs
    cell_id, attempt = attrs["cell_id"], int(attrs.get("attempt", 1))
    folder = ledger.folder
    if has_ok_result(folder, cell_id):  # a duplicate queue entry (e.g. two coordinators raced): never run twice
        ledger.complete(trial, None, note="skipped: the cell already has an ok result")
        return CellResult(cell_id, attempt, ok=True)
    others = [t for t in ledger.by_cell().get(cell_id, []) if t.number != trial.number]
    if ledger.done_elsewhere(others) or any(t.state.name == "COMPLETE" for t in others):
        ledger.complete(trial, None, note="skipped: another attempt of the cell completed")
        return CellResult(cell_id, attempt, ok=True)
    if any(t.state.name == "RUNNING" and t.number < trial.number and ledger.is_live(t) for t in others):
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
              "worker_device": os.environ.get(DEVICE_ENV)}
    checkpoint = StudyFolder(folder).checkpoint(cell_id)
    try:
        curve: list[dict[str, Any]] = []
        with ledger.beating(trial):  # RDB storages: the heartbeat that tells other machines this worker lives
                outcome = execute(config, folder, run_id=f"{ledger.name}.{stem}", labels=labels,
                              checkpoint=checkpoint,
                              progress=progress, save_model=True, file_stem=stem,
                              on_epoch=lambda point: ledger.report_epoch(trial, point, curve),
                              tensorboard=tensorboard,
                              tensorboard_name=f"{ledger.name}/{attrs.get('arm') or 'arm'}/{stem}")
    except (KeyboardInterrupt, SystemExit):
        ledger.fail(trial, "Interrupted", "the worker was stopped (SIGINT/SIGTERM) during the attempt")
        raise
    except Exception as exc:  # noqa: BLE001 - execute records training failures itself; this is the rest
        ledger.fail(trial, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        retried = not fail_fast and ledger.retry_if_allowed(trial)
        return CellResult(cell_id, attempt, ok=False, error=f"{type(exc).__name__}: {exc}", retried=retried)
    write_results_table(folder)  # the study's one table, current as each cell ends
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
         on_result: Callable[[CellResult], None] | None = None, tensorboard: Path | None = None
         ) -> list[CellResult]:
    """Pull cells until the queue is empty (or, with fail_fast, until the first failure)."""
    done = []
    while True:
        trial = ledger.pop()
        if trial is None:
            return done
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
               tensorboard: str | Path | None = None) -> int:
    """`ablate worker STUDY`: pull cells of an already-queued study until its queue is empty."""
    name, folder, _ = resolve_target(target, out)
    ledger = Ledger.open_existing(name, folder, storage)
    if ledger is None:
        raise ConfigError(f"{target}: study '{name}' has no ledger under {folder}; run `ablate sweep` first")
    signal.signal(signal.SIGTERM, _raise_exit)
    set_threads(threads)
    if tensorboard is not None:
        check_available()
    results = work(ledger, progress=progress, fail_fast=fail_fast,
                   tensorboard=Path(tensorboard) if tensorboard is not None else None)
    return 1 if fail_fast and any(not r.ok for r in results) else 0


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
