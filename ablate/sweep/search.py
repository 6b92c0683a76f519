"""Running search arms (ablate.sweep.search_space declares them).

Each search (an arm on one dataset × model × seed) is an Optuna study of its own in the sweep's storage, named
`<study>:search:<arm>/<dataset>/<model>/seed<seed>`, with its objectives' directions and its declaration as a study
user attribute — so any process that shares the storage (the sweep, a worker on another machine) can drive it.
Driving (`step`, under the ledger's lock) does two things: it tells each asked trial its cell's outcome (the
objective values from the result, or FAIL when every attempt failed), and while the budget lasts and fewer than
`parallel` trials are open it asks the sampler for the next point and queues that point's cell in the ledger, like
any grid cell (resumable, killable, exactly once). The sampler is created afresh for every ask with the seed
`seed × 1,000,003 + run seed × 10,007 + trial number`: its suggestions depend only on the search's history, so a
search with a fixed seed and `parallel: 1` asks the same points in the same order however often it is interrupted
(and each run seed's search its own points).
"""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from ablate.core.config import ConfigError, config_hash
from ablate.core.config_reading import build_config
from ablate.core.log import LOG
from ablate.core.seeds import derive
from ablate.study.selection import conditions_from_json, where_text
from ablate.sweep.attempts import ResultIndex, read_row
from ablate.sweep.cells import Cell
from ablate.sweep.folder import append_manifest
from ablate.sweep.ledger import Ledger
from ablate.sweep.search_space import SearchSpec, distributions
from ablate.sweep.storage import quiet_optuna

SPEC_ATTR, ATTEMPTS_ATTR = "ablate_search", "ablate_max_attempts"
NO_RETRY = {"TrainingDiverged", "ConfigError", "StaleCell"}  # failures the ledger does not retry


def study_name(ledger_name: str, spec: SearchSpec) -> str:
    return f"{ledger_name}:search:{spec.key}"


def register(ledger: Ledger, specs: list[SearchSpec], max_attempts: int) -> None:
    """Create (or update) each search's Optuna study with its declaration."""
    for spec in specs:
        search = optuna.create_study(storage=ledger.storage, study_name=study_name(ledger.name, spec),
                                     directions=spec.directions(), load_if_exists=True)
        if list(search.directions) != [optuna.study.StudyDirection[d.upper()] for d in spec.directions()]:
            raise ConfigError(f"search {spec.key}: its objectives changed since it started ({spec.objectives}); "
                              "rename the arm to start a new search")
        if search.metric_names is None:
            with quiet_optuna():
                search.set_metric_names(list(spec.objectives))
        search.set_user_attr(SPEC_ATTR, json.loads(spec.to_json()))
        search.set_user_attr(ATTEMPTS_ATTR, max_attempts)


def searches(ledger: Ledger) -> list[tuple[SearchSpec, optuna.Study, int]]:
    """Every search of this sweep in the storage: (declaration, its study, attempts per trial)."""
    prefix = f"{ledger.name}:search:"
    out = []
    for frozen in ledger.storage.get_all_studies():
        if frozen.study_name.startswith(prefix) and SPEC_ATTR in frozen.user_attrs:
            spec = SearchSpec(**frozen.user_attrs[SPEC_ATTR])
            study = optuna.load_study(study_name=frozen.study_name, storage=ledger.storage)
            out.append((spec, study, int(frozen.user_attrs.get(ATTEMPTS_ATTR, 2))))
    return out


CONSTRAINTS_ATTR = "constraints"  # a trial's violations of the study's select constraint (≤ 0: met), readable


def _sampler(spec: SearchSpec, number: int) -> optuna.samplers.BaseSampler:
    seed = derive(spec.sampler_seed, "search_sampler", spec.seed * 10_007 + number) % 2**32
    return optuna.samplers.TPESampler(seed=seed) if spec.sampler == "tpe" else optuna.samplers.RandomSampler(seed)


def _record_constraints(ledger: Ledger, search: optuna.Study, trial: Any, spec: SearchSpec,
                        row: dict[str, Any]) -> None:
    """The study's select constraint on a finished trial, before it is told: Optuna constraints (TPE samples the
    feasible region first; ≤ 0 is met) and, for people and tools, the list as a user attribute."""
    conditions = conditions_from_json(spec.where)
    violations = [c.violation(row) for c in conditions]
    live = optuna.trial.Trial(search, ledger.trial_id(trial))
    for condition, value in zip(conditions, violations):
        live.set_constraint(condition.text(), value)
    live.set_user_attr(CONSTRAINTS_ATTR, violations)


def _outcome(ledger: Ledger, results: ResultIndex, trials: list[Any], cell_id: str
             ) -> tuple[str, dict[str, Any] | None]:
    """('ok', metrics) | ('failed', None) | ('open', None) for a search trial's cell."""
    if results.ok(cell_id):
        attempt = max(a for a in results.files[cell_id] if results.status(cell_id, a) == "ok")
        return "ok", read_row(results.files[cell_id][attempt])
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("metrics")]
    if done:  # finished on another machine: its validation metrics travel in the ledger
        return "ok", done[-1].user_attrs["metrics"]
    if any(ledger.is_live(t) for t in trials) or not trials:
        return "open", None
    last = max(trials, key=lambda t: int(t.user_attrs.get("attempt", 0)))
    exhausted = int(last.user_attrs.get("attempt", 1)) >= int(last.user_attrs.get("max_attempt", 1))
    if last.state == TrialState.FAIL and (exhausted or last.user_attrs.get("error_class") in NO_RETRY):
        return "failed", None
    return "open", None


def step(ledger: Ledger) -> int:
    """Tell finished trials, ask new ones while budgets last; returns how many trials were asked. Call under
    `ledger.lock()`."""
    found = searches(ledger)
    if not found:
        return 0
    results = ResultIndex(ledger.folder)
    by_cell = ledger.by_cell()
    asked = 0
    manifest_rows = []
    for spec, search, max_attempts in found:
        for trial in search.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            cell_id = trial.user_attrs.get("cell_id")
            if cell_id is None:  # asked, killed before its cell was queued: ask again
                search.tell(trial.number, state=TrialState.FAIL)
                continue
            state, row = _outcome(ledger, results, by_cell.get(cell_id, []), cell_id)
            if state == "ok":
                values = [float((row or {}).get(o, math.nan)) for o in spec.objectives]
                if spec.where:  # recorded before tell: the sampler reads them when the trial completes
                    _record_constraints(ledger, search, trial, spec, row or {})
                if all(math.isfinite(v) for v in values):
                    search.tell(trial.number, values)
                else:
                    search.tell(trial.number, state=TrialState.FAIL)
            elif state == "failed":
                search.tell(trial.number, state=TrialState.FAIL)
        trials = search.get_trials(deepcopy=False)
        open_ = sum(t.state == TrialState.RUNNING for t in trials)
        while len(trials) < spec.trials and open_ < spec.parallel:
            search.sampler = _sampler(spec, len(trials))
            with quiet_optuna():
                trial = search.ask(distributions(spec.space))
            config = build_config(spec.raw_at(trial.params), f"search {spec.key}, trial {trial.number}")
            cell = Cell(cell_id=config_hash(config), arm=spec.arm, dataset=spec.dataset, model=spec.model,
                        seed=spec.seed, settings=dict(trial.params), config=config)
            trial.set_user_attr("cell_id", cell.cell_id)
            cell_trials = by_cell.get(cell.cell_id, [])
            if not results.ok(cell.cell_id) and not any(ledger.is_live(t) for t in cell_trials) \
                    and not any(t.state == TrialState.COMPLETE for t in cell_trials):
                last = max([results.max_attempt(cell.cell_id)]
                           + [int(t.user_attrs.get("attempt", 0)) for t in cell_trials])
                ledger.enqueue(cell, last + 1, last + max_attempts, search=spec.key,
                               objectives=tuple(spec.objectives))
            manifest_rows.append({**cell_row(cell), "search": spec.key})
            LOG.debug(f"search {spec.key}: trial {trial.number} asks {trial.params} (cell {cell.cell_id})")
            trials = search.get_trials(deepcopy=False)
            open_ += 1
            asked += 1
    append_manifest(ledger.folder, manifest_rows)
    return asked


def cell_row(cell: Cell) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "arm": cell.arm, "dataset": cell.dataset, "model": cell.model, "seed": cell.seed,
            "settings": json.dumps(cell.settings, sort_keys=True), "config": cell.canonical_json()}


def pending(ledger: Ledger) -> bool:
    """Whether a search has trials not yet told or not yet asked."""
    return any(len(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                        TrialState.PRUNED))) < spec.trials
               for spec, s, _ in searches(ledger))


def progress_lines(ledger: Ledger) -> list[str]:
    """One line per search: trials done of the budget, and its best value or Pareto front size."""
    lines = []
    for spec, search, _ in searches(ledger):
        done = search.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        failed = search.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        text = f"search {spec.key}: {len(done)}/{spec.trials} trials done" + (f", {len(failed)} failed" if failed
                                                                              else "")
        try:  # with a select constraint, Optuna's best is among the trials that meet it
            if done and len(spec.objectives) == 1:
                text += f"; best {spec.objectives[0]} {search.best_value:.3f} ({search.best_trial.params})"
            elif done:
                text += f"; Pareto front of {len(search.best_trials)} trial(s) on {', '.join(spec.objectives)}"
        except ValueError:
            text += f"; no trial meets {where_text(conditions_from_json(spec.where))} yet"
        lines.append(text)
    return lines
