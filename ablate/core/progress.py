"""One progress line for a whole run: every training step and the final evaluation, with one ETA for both.

The ETA is measured, not guessed: training time per step so far, and for the evaluation (before it starts) the
time per sentence of the last validation pass × (K + 1) — the importance-weighted NLL decodes each sentence K
times, the rec/KL pass once more — then, once it runs, its own time per sentence.
"""

from __future__ import annotations

import math
import logging
import time

from tqdm import tqdm

from ablate.core.log import LOG

RESOLUTION = 1000  # the bar counts thousandths of the estimated work
DRAW_EVERY = 0.25  # seconds between redraws (a step costs a clock read, not a formatted line)


def format_seconds(seconds: float, precise: bool = False, words: bool = False) -> str:
    """A duration, the one way ablate writes one: `1h02m` / `3m05s` on a progress line, `1h02m03s` with `precise`
    (a sweep's wall time and ETA), `1 h 02 min` / `3 min 05 s` / `5 s` with `words` (the report); NaN is –."""
    if math.isnan(seconds):
        return "–"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if words:
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
    if hours:
        return f"{hours}h{minutes:02d}m" + (f"{secs:02d}s" if precise else "")
    return f"{minutes}m{secs:02d}s"


class _Bar(tqdm):
    """tqdm with our own text after the bar (tqdm's postfix always starts with ', ')."""

    text = ""

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "text": self.text}


class RunProgress:
    """Counts a run's work (`step` per optimiser step, `validated` per validation pass, `evaluated` per sentence of
    the final evaluation) and shows it as one line; `enabled=False` keeps the count and draws nothing."""

    def __init__(self, enabled: bool, train_steps: int, eval_sentences: int = 0, iw_samples: int = 1,
                 clock=time.perf_counter, label: str = "", eval_tokens: int = 0) -> None:
        self.label = label  # which cell, in a sweep: its notes name it ("vanilla seed 1: epoch 1 ...")
        self.train_steps = train_steps  # planned (a phase with its own budget adds to it: plan_more)
        self.eval_sentences = eval_sentences
        self.eval_tokens = eval_tokens  # the evaluation's work is measured in tokens (sentences go shortest first)
        self.eval_tokens_done = 0
        self.valid_seconds_per_token: float | None = None
        self.iw_samples = iw_samples
        self.clock = clock
        self.steps_done = 0
        self.steps_timed = 0  # steps of this process (a resumed run's earlier steps were not timed here)
        self.train_seconds = 0.0
        self.eval_done = 0
        self.eval_seconds = 0.0
        self.valid_seconds_per_sentence: float | None = None
        self.stage = "train"
        self.detail = ""
        self._since: float | None = None  # start of the current stretch of training or evaluation
        self._drawn = -1.0
        self.bar = _Bar(total=RESOLUTION, disable=not enabled, leave=False, dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {text}")

    # -- counting ------------------------------------------------------------------------------------------

    def resumed(self, steps: int) -> None:
        """Steps done before a checkpoint this run continues from."""
        self.steps_done = steps

    def plan_more(self, steps: int) -> None:
        """More training steps than first planned (a pretraining phase's own budget)."""
        self.train_steps += steps

    def begin(self, stage: str) -> None:
        """A stretch of training ('epoch 3/10 [vae]') or evaluation ('eval test') starts now."""
        self.stage = stage
        self._since = self.clock()
        self._draw(force=True)

    def step(self, detail: str = "") -> None:
        now = self.clock()
        if self._since is not None:
            self.train_seconds += now - self._since
        self._since = now
        self.steps_done += 1
        self.steps_timed += 1
        if detail:
            self.detail = detail
        self._draw()

    def pause(self) -> None:
        """Training stops (checkpoints, techniques' end of epoch): the time until the next `begin` is not training
        time. A validation pass (`begin("validate epoch N")` … `pause()`) counts with training: the rate per step
        then carries each epoch's validation, which the epochs still to come will pay too."""
        if self._since is not None and self.stage != "eval":
            self.train_seconds += self.clock() - self._since
        self._since = None

    def validated(self, seconds: float, sentences: int, tokens: int = 0) -> None:
        if sentences:
            self.valid_seconds_per_sentence = seconds / sentences
        if tokens:
            self.valid_seconds_per_token = seconds / tokens

    def evaluated(self, sentences: int, tokens: int = 0) -> None:
        now = self.clock()
        if self._since is not None:
            self.eval_seconds += now - self._since
        self._since = now
        self.eval_done += sentences
        self.eval_tokens_done += tokens
        self.detail = ""
        self._draw()

    # -- estimating ----------------------------------------------------------------------------------------

    def _eval_rate(self, done: int, valid_rate: float | None) -> float | None:
        """Evaluation seconds per unit: measured once it runs, else the last validation's rate × (K + 1)."""
        if done:
            return self.eval_seconds / done
        return None if valid_rate is None else valid_rate * (self.iw_samples + 1)

    def eval_seconds_per_sentence(self) -> float | None:
        return self._eval_rate(self.eval_done, self.valid_seconds_per_sentence)

    def eval_seconds_per_token(self) -> float | None:
        return self._eval_rate(self.eval_tokens_done, self.valid_seconds_per_token)

    def remaining_seconds(self) -> float | None:
        """Seconds of work left (None until both parts have a measured rate). The evaluation's part counts tokens
        when they are known: sentences go shortest first, so a rate per sentence would keep growing."""
        left_steps = max(0, self.train_steps - self.steps_done)
        train_rate = self.train_seconds / self.steps_timed if self.steps_timed else None
        if self.eval_tokens:
            left_eval = max(0, self.eval_tokens - self.eval_tokens_done)
            eval_rate = self.eval_seconds_per_token()
        else:
            left_eval = max(0, self.eval_sentences - self.eval_done)
            eval_rate = self.eval_seconds_per_sentence()
        if (left_steps and train_rate is None) or (left_eval and eval_rate is None):
            return None
        return left_steps * (train_rate or 0.0) + left_eval * (eval_rate or 0.0)

    def fraction_done(self) -> float:
        left = self.remaining_seconds()
        spent = self.train_seconds + self.eval_seconds
        if left is None:
            total = self.train_steps + self.eval_sentences
            return (self.steps_done + self.eval_done) / total if total else 1.0
        if self.stage.startswith("validate"):  # a validation pass is under way: the bar does not stand still
            return min(0.999, (spent + self.clock() - (self._since or self.clock())) / (spent + left)) \
                if spent + left > 0 else 1.0
        return spent / (spent + left) if spent + left > 0 else 1.0

    # -- drawing -------------------------------------------------------------------------------------------

    def line(self) -> str:
        left = self.remaining_seconds()
        if left is not None:
            eta = f"ETA {format_seconds(left)}"
        elif self.steps_timed:  # training's rate is known, the evaluation's not yet (no validation pass so far)
            left_steps = max(0, self.train_steps - self.steps_done)
            eta = f"ETA {format_seconds(left_steps * self.train_seconds / self.steps_timed)} + evaluation"
        else:
            eta = "ETA after the first steps"
        where = f"step {self.steps_done}/{self.train_steps}"
        if self.eval_sentences and self.eval_done:
            where += f", eval {self.eval_done}/{self.eval_sentences} sent"
        return " · ".join(part for part in (where, self.detail, eta) if part)

    def _draw(self, force: bool = False) -> None:
        if self.bar.disable:
            return
        now = self.clock()
        if not force and now - self._drawn < DRAW_EVERY:
            return
        self._drawn = now
        self.bar.set_description_str(self.stage, refresh=False)
        self.bar.text = self.line()
        self.bar.n = int(RESOLUTION * self.fraction_done())
        self.bar.refresh()

    def write(self, message: str) -> None:
        """A note above the line (an epoch's validation values): shown with the line, a detail (-v) without it."""
        LOG.log(logging.DEBUG if self.bar.disable else logging.INFO, f"{self.label}: {message}" if self.label
                else message)

    def close(self) -> None:
        self.bar.close()
