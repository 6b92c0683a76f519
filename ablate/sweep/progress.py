"""Counting a study's cells by state, the per-arm table, the sweep's progress bar and its failure summary."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import TextIO


from optuna.trial import TrialState

from ablate.core.progress import format_seconds
from ablate.sweep.attempts import ResultIndex
from ablate.sweep.ledger import CellCounts, Ledger
from ablate.sweep.cells import Study


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
        return format_seconds(rate * (self.total - finished), precise=True)

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
            elapsed = format_seconds(time.perf_counter() - self.started, precise=True)
            print(f"sweep: {done} done, {failed} failed, {running} running of {self.total} cells; "
                  f"elapsed {elapsed}, ETA {self.eta(finished)}",
                  file=self.stream, flush=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _counts_now(ledger: Ledger, study: Study, ok_at_start: set[str]) -> CellCounts:
    grouped = ledger.by_cell()
    out = CellCounts()
    for cell in study.cells:
        state = ledger.cell_state(grouped.get(cell.cell_id, []), cell.cell_id in ok_at_start)
        setattr(out, state, getattr(out, state) + 1)
    return out


def running_lines(ledger: Ledger, now: datetime | None = None) -> list[str]:
    """Where each live attempt stands, one line each: its arm and seed, how long since it was claimed, and its
    last validation point in this attempt (epoch, phase, rec, KL, −ELBO, AU) — hours-long cells show they move."""
    now = now or datetime.now(timezone.utc)
    lines = []
    for trial in ledger.trials((TrialState.RUNNING,)):
        if not ledger.is_live(trial):
            continue
        attrs = trial.user_attrs
        since = ""
        try:
            claimed = datetime.fromisoformat(str(attrs["claimed_at"]))
            claimed = claimed if claimed.tzinfo else claimed.replace(tzinfo=timezone.utc)
            since = f", claimed {format_seconds((now - claimed).total_seconds())} ago"
        except (KeyError, ValueError, TypeError):
            pass  # an attempt claimed by an older ablate: no time
        curve = attrs.get("valid_curve") or []
        try:
            last = curve[-1]
            where = (f"epoch {int(last['epoch']) + 1} [{last['phase']}] done: valid rec {float(last['rec']):.2f}, "
                     f"KL {float(last['kl']):.3f}, -ELBO {float(last['nelbo']):.2f}"
                     + (f", AU {int(last['au'])}" if isinstance(last.get("au"), int) else ""))
        except (IndexError, KeyError, ValueError, TypeError):
            where = "no epoch finished in this attempt yet"
        where += epoch_pace(curve) + epoch_progress(attrs.get("progress"), curve, now)
        lines.append(f"running: arm '{attrs.get('arm', '?')}' seed {attrs.get('seed', '?')} cell "
                     f"{attrs.get('cell_id', '?')} (attempt {attrs.get('attempt', '?')}{since}): {where}")
    return lines


def epoch_progress(progress: object, curve: list[dict], now: datetime) -> str:
    """"; epoch 2 [vae]: step 424 of 1,315 (21,305 inner steps), 1m40s ago": where the epoch after the last
    validation point stands (Ledger.report_progress, every few minutes); "" when none is reported or the report
    is of an epoch already validated."""
    if not isinstance(progress, dict):
        return ""
    try:
        epoch, step, steps = int(progress["epoch"]), int(progress["step"]), int(progress["steps"])
        phase, inner = str(progress["phase"]), int(progress.get("inner_steps") or 0)
        at = datetime.fromisoformat(str(progress["at"]))
        if curve and int(curve[-1].get("epoch", -1)) >= epoch:
            return ""  # that epoch has its validation point already
    except (KeyError, ValueError, TypeError, AttributeError):
        return ""
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    ago = format_seconds(max(0.0, (now - at).total_seconds()))
    inner_text = f" ({inner:,} inner steps)" if inner else ""
    return f"; epoch {epoch + 1} [{phase}]: step {step:,} of {steps:,}{inner_text}, {ago} ago"


def epoch_pace(curve: list[dict]) -> str:
    """", ≈ 4m10s an epoch (last 3)": the mean time between the last few validation points of the attempt's
    current phase (points stamped `at` by Ledger.report_epoch); "" when fewer than two have a time."""
    if not curve:
        return ""
    times = []
    for point in reversed(curve):
        if point.get("phase") != curve[-1].get("phase") or len(times) == 4:
            break
        try:
            times.append(datetime.fromisoformat(str(point["at"])))
        except (KeyError, ValueError, TypeError):
            break
    if len(times) < 2:
        return ""
    return f", ≈ {format_seconds((times[0] - times[-1]).total_seconds() / (len(times) - 1))} an epoch (last " \
           f"{len(times) - 1})"


def failure_lines(ledger: Ledger, study: Study, limit: int = 20) -> list[str]:
    """Why each failed cell failed: its last attempt's error, one line per cell (the first `limit`)."""
    grouped = ledger.by_cell()
    lines = []
    for cell in study.cells:
        trials = grouped.get(cell.cell_id, [])
        if ledger.cell_state(trials, False) != "failed":
            continue
        last = max((t for t in trials if t.state == TrialState.FAIL), key=lambda t: int(t.user_attrs.get("attempt", 0)))
        attrs = last.user_attrs
        lines.append(f"failed: arm '{cell.arm}' seed {cell.seed} ({cell.dataset}, {cell.model}) cell {cell.cell_id}, "
                     f"{attrs.get('attempt', '?')} attempt(s): {attrs.get('error_class', '?')}: "
                     f"{str(attrs.get('error_message', ''))[:200]}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more failed cells (ablate report lists them all)"]
    return lines
