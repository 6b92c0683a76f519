"""Optuna storage as the durable queue and ledger of a sweep.

One Optuna study per ablate study. Each attempt at a cell is one Optuna trial, created by `enqueue_trial` (state
WAITING) with user attributes

    cell_id, attempt, max_attempt, arm, dataset, model, seed, settings (JSON), config (flattened resolved
    config), run_config (the run config as JSON, so a worker needs nothing but the ledger)

A worker pops a WAITING trial (the storage's WAITING → RUNNING transition is atomic: of two workers racing for
one trial exactly one wins; each writes a claimant key first, so a winner killed before it records its pid is
still accounted for), records its claim on it (`claim`: pid, its start time, host, in one record), runs the cell and ends the
trial COMPLETE (value: `ablate.metrics.schema.selection_value` of the row, the study's rule of "best": valid NLL by
default) or FAIL (user attributes error_class, error_message). A failed attempt is retried
by enqueueing attempt + 1 while attempt < max_attempt (Optuna's own retry only covers dead workers).

The result files are the truth, the ledger is the queue: a cell with an ok result file is never enqueued, and
a cell with a WAITING trial or a RUNNING trial whose process is alive (a "live attempt") is not enqueued again.
A RUNNING trial whose process is gone (same host; pid checked against its start time, so a reused pid does not
count as alive) is reclaimed: COMPLETE if its result file says ok (the worker died between writing the row and
updating the ledger), otherwise FAIL with error_class WorkerDied and a failed result row, so no attempt is
lost. On a journal or Redis storage dead workers are only detected on this machine (a trial claimed on another
host stays RUNNING); on an RDB storage (PostgreSQL, MySQL) every worker records a heartbeat for its trial every
`heartbeat_seconds()`, and a trial whose heartbeat is older than the grace period is dead wherever it ran.
Across machines a COMPLETE trial counts as done (its result file is on the machine that ran it, see
`ablate collect`), and decisions to enqueue or reclaim take a database-wide lock (PostgreSQL advisory lock,
MySQL GET_LOCK) besides the local one.

Default storage: a journal file `results/<study>/ledger.journal` (Optuna's JournalFileBackend: safe for many
processes on one machine). `--storage` takes a journal path (`*.journal`, `journal:PATH`), `redis://…`, or any
RDB URL (`postgresql+psycopg://…`, `mysql+pymysql://…`; `sqlite:///x.db` for one process only).
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ablate.core.config import canonical_dict, flatten
from ablate.results.layout import StudyFolder
from ablate.metrics.schema import SELECT, selection_value
from ablate.results.safe_files import STORAGE_ERRNOS
from ablate.sweep.attempts import (ResultIndex, claim_of, has_ok_result, now_iso, process_start,
                                   read_row, record_lost_attempt)
from ablate.sweep.cells import Cell
from ablate.sweep.liveness import HOST_ENV, Liveness
from ablate.sweep.storage import _storage_error, open_storage, quiet_optuna


optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- the ledger


@dataclass
class CellCounts:
    expected: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    pending: int = 0  # not queued, or last attempt lost with a dead worker: the next `ablate sweep` runs them


class Ledger(Liveness):
    """One Optuna study in a storage, used as a queue of cell attempts."""

    def __init__(self, storage: BaseStorage, study_name: str, folder: Path):
        self.storage = storage
        self.name = study_name
        self.folder = Path(folder)
        self.study_id = storage.get_study_id_from_name(study_name)
        self.host = os.environ.get(HOST_ENV) or socket.gethostname()
        # Optuna's heartbeat storages (RDB, gRPC) have `get_heartbeat_interval`; its base class BaseHeartbeat lives in
        # the private optuna.storages._heartbeat, so the method is asked for instead of the class
        interval = getattr(storage, "get_heartbeat_interval", None)
        self.heartbeats = callable(interval) and interval() is not None
        self._stale: tuple[float, set[int]] = (-1.0, set())

    @classmethod
    def open(cls, study_name: str, folder: Path, url: str | None = None) -> "Ledger":
        storage = open_storage(folder, url)
        try:
            study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize",
                                        load_if_exists=True)
            if study.metric_names is None:  # optuna's tools and optuna-dashboard name the value
                with quiet_optuna():
                    study.set_metric_names([SELECT[0]])
        except Exception as error:  # noqa: BLE001 - a server that went away between connecting and writing
            if url is None or isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
                raise
            raise _storage_error(url, error) from None
        return cls(storage, study_name, folder)

    @classmethod
    def open_existing(cls, study_name: str, folder: Path, url: str | None = None,
                      write: bool = False) -> "Ledger | None":
        """An existing ledger (None when there is none yet; never creates one): read-only (status, dry run) unless
        `write` (a worker)."""
        if url is None and not StudyFolder(folder).journal.exists():
            return None
        storage = open_storage(folder, url, write=write)
        try:
            return cls(storage, study_name, folder)
        except KeyError:
            return None

    @functools.cached_property
    def optuna_study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.storage)

    # -- reading -----------------------------------------------------------------------------------------

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def trial_id(self, trial: FrozenTrial) -> int:
        return trial._trial_id

    def by_cell(self, trials: list[FrozenTrial] | None = None) -> dict[str, list[FrozenTrial]]:
        out: dict[str, list[FrozenTrial]] = {}
        for trial in self.trials() if trials is None else trials:
            cell = trial.user_attrs.get("cell_id")
            if cell:
                out.setdefault(cell, []).append(trial)
        return out

    # -- writing -----------------------------------------------------------------------------------------

    def enqueue(self, cell: Cell, attempt: int, max_attempt: int, search: str = "",
                objectives: tuple[str, ...] = ()) -> None:
        """Queue one attempt at a cell (a study.Cell); `search`: the key of the search that asked for it."""
        config = cell.config
        attrs = {"cell_id": cell.cell_id, "attempt": attempt, "max_attempt": max_attempt, "arm": cell.arm,
                 "dataset": cell.dataset, "model": cell.model, "seed": cell.seed,
                 "techniques": ", ".join(sorted(config.techniques)) or "none",
                 "settings": json.dumps(cell.settings, sort_keys=True),
                 "config": flatten(canonical_dict(config)),
                 "run_config": json.dumps(config.model_dump(mode="json"), sort_keys=True),
                 "enqueued_at": now_iso(),
                 **({"search": search, "search_objectives": ",".join(objectives)} if search else {})}
        self.optuna_study.enqueue_trial({}, user_attrs=attrs)

    def requeue(self, trial: FrozenTrial, attempt: int) -> None:
        """Queue the next attempt of a trial's cell with the same attributes."""
        attrs = {k: v for k, v in trial.user_attrs.items()
                 if k in ("cell_id", "max_attempt", "arm", "dataset", "model", "seed", "techniques", "settings",
                          "config", "run_config", "search", "search_objectives")}
        attrs.update({"attempt": attempt, "enqueued_at": now_iso()})
        self.optuna_study.enqueue_trial({}, user_attrs=attrs)

    def pop(self, arms: frozenset[str] | None = None) -> FrozenTrial | None:
        """Claim the oldest WAITING trial (of one of `arms`, when given) for this process (atomic in the storage)
        and record the claim.

        The writes, in order: a heartbeat (RDB storages: a claimer killed at any later point is found by its
        silence), a claimant key of this process (`claimant:<host>:<pid>:<start>`), the WAITING → RUNNING transition
        (of two racing workers exactly one wins), then the claim itself — pid, its start time, host and time in one
        user attribute `claim`, written in one record, so no kill can leave half a claim. A RUNNING trial whose
        claim is missing is judged by its claimants and, after CLAIM_GRACE_SECONDS, reclaimed (`is_live`).
        `pid`, `host` and `claimed_at` are also written on their own, for people and tools that read them.
        """
        pid = os.getpid()
        start = process_start(pid)
        for trial in self.trials((TrialState.WAITING,)):
            if arms is not None and trial.user_attrs.get("arm") not in arms:
                continue
            trial_id = self.trial_id(trial)
            try:
                if self.heartbeats:
                    self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                self.storage.set_trial_user_attr(trial_id, f"claimant:{self.host}:{pid}:{start}", now_iso())
                claimed = self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            except UpdateFinishedTrialError:
                continue
            if not claimed:
                continue
            claim = {"pid": pid, "pid_start": start, "host": self.host, "claimed_at": now_iso()}
            self.storage.set_trial_user_attr(trial_id, "claim", claim)
            if self.heartbeats:
                self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            self._set_params(trial_id, trial.user_attrs)
            self._set_attrs(trial_id, claim)
            return self.storage.get_trial(trial_id)
        return None

    def _set_params(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """The cell's arm (categorical over the study's arms) and numeric swept settings as the trial's params, so
        `optuna trials` and optuna-dashboard group and plot by them (a setting as a one-point float range: the
        ledger asks no sampler, and Optuna wants one distribution per name across a study). The seed is a user
        attribute, not a param: it is a replicate, not a setting whose "importance" means anything."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        try:
            settings = json.loads(attrs.get("settings") or "{}")
        except ValueError:
            settings = {}
        arm = attrs.get("arm")
        if isinstance(arm, str) and arm:
            arms = self.storage.get_study_user_attrs(self.study_id).get("arms") or []
            choices = tuple(arms) if arm in arms else tuple(sorted({*arms, arm}))
            try:
                self.storage.set_trial_param(trial_id, "arm", float(choices.index(arm)),
                                             CategoricalDistribution(choices))
            except Exception:  # noqa: BLE001 - params are for reading; the run never depends on them
                pass
        for name, value in settings.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            try:
                self.storage.set_trial_param(trial_id, name, float(value), FloatDistribution(value, value))
            except Exception:  # noqa: BLE001
                pass

    def _set_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def complete(self, trial: FrozenTrial, row: dict[str, Any] | None, note: str = "") -> None:
        trial_id = self.trial_id(trial)
        value = selection_value(row or {})  # the trial's value: the one rule of "best"
        metrics = {k: float(v) for k, v in (row or {}).items()  # for searches driven on another machine
                   if k.startswith("valid.") and isinstance(v, (int, float)) and math.isfinite(v)}
        shown = {f"{split}.{name}": float(row[f"{split}.{name}"]) for split in ("valid", "test")  # the dashboard's
                 for name in ("nll", "nelbo", "kl", "mi", "au")  # columns: the collapse signature of each trial
                 if isinstance((row or {}).get(f"{split}.{name}"), (int, float))
                 and math.isfinite(row[f"{split}.{name}"])}
        try:
            self._set_attrs(trial_id, {"status": "ok", "finished_at": now_iso(), **({"note": note} if note else {}),
                                       **({"metrics": metrics} if metrics else {}), **shown})
            self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[value])
        except UpdateFinishedTrialError:
            pass

    def fail(self, trial: FrozenTrial, error_class: str, error_message: str) -> bool:
        """End a trial FAIL; False when it had already ended (another process reclaimed it first)."""
        trial_id = self.trial_id(trial)
        try:
            self._set_attrs(trial_id, {"status": "failed", "error_class": error_class,
                                       "error_message": error_message[:500], "finished_at": now_iso()})
            return bool(self.storage.set_trial_state_values(trial_id, TrialState.FAIL))
        except UpdateFinishedTrialError:
            return False

    def report_epoch(self, trial: FrozenTrial, point: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        """An epoch's validation point, live: Optuna's intermediate value at step = epoch (valid −ELBO, so
        optuna-dashboard draws the curve while the study runs) and the named values (rec, KL, −ELBO, phase) in
        the user attribute `valid_curve`, with the epoch's last β and its active units (AU, when the model has a
        latent). A reporting failure never stops training."""
        entry = {"epoch": int(point["epoch"]), "phase": point["phase"], "rec": point["rec"], "kl": point["kl"],
                 "nelbo": point["loss"], "beta": point.get("beta"), "at": now_iso()}
        au = point.get("au")
        if isinstance(au, (int, float)) and math.isfinite(au):
            entry["au"] = int(au)
        curve.append(entry)
        direct = getattr(self.storage, "_ablate_direct", {})  # never waits out an outage: training goes on
        try:
            trial_id = self.trial_id(trial)
            direct.get("set_trial_intermediate_value", self.storage.set_trial_intermediate_value)(
                trial_id, int(point["epoch"]), float(point["loss"]))
            direct.get("set_trial_user_attr", self.storage.set_trial_user_attr)(trial_id, "valid_curve", curve)
        except Exception:  # noqa: BLE001 - the row and curves files keep the record
            pass

    def report_progress(self, trial: FrozenTrial, where: dict[str, Any]) -> None:
        """Where the attempt's current epoch stands (epoch, phase, step of steps, inner steps so far), stamped
        `at`, in the user attribute `progress` (`ablate status` prints it). A reporting failure never stops
        training."""
        direct = getattr(self.storage, "_ablate_direct", {})
        try:
            direct.get("set_trial_user_attr", self.storage.set_trial_user_attr)(
                self.trial_id(trial), "progress", {**where, "at": now_iso()})
        except Exception:  # noqa: BLE001 - only a display
            pass

    def retry_if_allowed(self, trial: FrozenTrial) -> bool:
        attempt = int(trial.user_attrs.get("attempt", 1))
        if attempt < int(trial.user_attrs.get("max_attempt", attempt)):
            with self.lock():
                cell = trial.user_attrs["cell_id"]
                trials = self.by_cell().get(cell, [])
                live = any(self.is_live(t) for t in trials)
                done = any(t.state == TrialState.COMPLETE for t in trials)
                if not live and not done and not has_ok_result(self.folder, cell):
                    self.requeue(trial, attempt + 1)
                    return True
        return False

    # -- reclaim and sync (call under `lock()`) ---------------------------------------------------------

    def reclaim(self, retry: bool) -> list[FrozenTrial]:
        """End the RUNNING trials of dead workers (see the module docstring); optionally queue their retries."""
        reclaimed = []
        results = ResultIndex(self.folder)
        for trial in self.trials((TrialState.RUNNING,)):
            if self.is_live(trial) or "cell_id" not in trial.user_attrs:
                continue
            cell, attempt = trial.user_attrs["cell_id"], int(trial.user_attrs.get("attempt", 1))
            status = results.status(cell, attempt)
            if status == "ok":
                self.complete(trial, read_row(results.files[cell][attempt]), note="reclaimed: worker died after "
                                                                                   "writing its result")
                continue
            if status == "failed":
                row = read_row(results.files[cell][attempt])
                won = self.fail(trial, str(row.get("error_class") or "Failed"), str(row.get("error_message") or ""))
            else:
                how = "stopped sending heartbeats" if self.heartbeats and trial._trial_id in self.stale_trial_ids() \
                    else "died"
                message = (f"worker pid {trial.user_attrs.get('pid', '?')} on {trial.user_attrs.get('host', '?')} "
                           f"{how} during the attempt (killed, crashed or cut off)")
                won = self.fail(trial, "WorkerDied", message)  # atomic: of two reclaimers one wins
                if won:
                    record_lost_attempt(self.folder, trial, message)
            if not won:
                continue
            reclaimed.append(trial)
            if retry and attempt < int(trial.user_attrs.get("max_attempt", attempt)):
                self.requeue(trial, attempt + 1)
        return reclaimed

    def sync(self, cells: list[Cell], max_attempts: int) -> dict[str, int]:
        """Queue every cell with no ok result and no live attempt (each gets `max_attempts` tries from now).
        Returns counts: done, queued (already waiting), running (held by a live worker elsewhere), enqueued."""
        results = ResultIndex(self.folder)
        grouped = self.by_cell()
        counts = {"done": 0, "queued": 0, "running": 0, "enqueued": 0}
        self.declare_arms([cell.arm for cell in cells])
        for cell in cells:
            trials = grouped.get(cell.cell_id, [])
            if results.ok(cell.cell_id) or self.done_elsewhere(trials):
                counts["done"] += 1
                continue
            if any(t.state == TrialState.WAITING for t in trials):
                counts["queued"] += 1  # queued earlier (e.g. by a sweep that was stopped): runs here like the rest
                continue
            if any(self.is_live(t) for t in trials):
                counts["running"] += 1  # a live worker of another sweep or machine holds it
                continue
            last = max([results.max_attempt(cell.cell_id)] + [int(t.user_attrs.get("attempt", 0)) for t in trials])
            self.enqueue(cell, last + 1, last + max_attempts)
            counts["enqueued"] += 1
        return counts

    def known_arms(self) -> list[str]:
        """The arms the study's sweeps declared (declare_arms)."""
        return list(self.storage.get_study_user_attrs(self.study_id).get("arms") or [])

    def declare_arms(self, arms: list[str]) -> None:
        """Record the study's arms (the Optuna study's user attribute `arms`): the choices of every trial's
        categorical `arm` param, so optuna-dashboard can group trials by arm."""
        known = self.storage.get_study_user_attrs(self.study_id).get("arms") or []
        if arms and not set(arms) <= set(known):
            self.storage.set_study_user_attr(self.study_id, "arms", sorted({*known, *arms}))

    def done_elsewhere(self, trials: list[FrozenTrial]) -> bool:
        """A COMPLETE trial claimed on another machine: done there (its files are there; `ablate collect`)."""
        return any(t.state == TrialState.COMPLETE and (claim_of(t) or {}).get("host") not in (None, self.host)
                   for t in trials)

    # -- counting ----------------------------------------------------------------------------------------

    def cell_state(self, trials: list[FrozenTrial], ok_file: bool) -> str:
        """done | running | waiting | failed | pending, from a cell's trials (and whether an ok file exists)."""
        if ok_file or any(t.state == TrialState.COMPLETE for t in trials):
            return "done"
        if any(t.state == TrialState.RUNNING and self.is_live(t) for t in trials):
            return "running"
        if any(t.state == TrialState.WAITING for t in trials):
            return "waiting"
        finished = [t for t in trials if t.state == TrialState.FAIL]
        if finished and not any(t.state == TrialState.RUNNING for t in trials):
            last = max(finished, key=lambda t: int(t.user_attrs.get("attempt", 0)))
            if last.user_attrs.get("error_class") != "Interrupted":
                return "failed"
        return "pending"
