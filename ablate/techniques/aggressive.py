"""Aggressive inference-network training (He et al. 2019, "Lagging Inference Networks and Posterior Collapse in
Variational Autoencoders", ICLR; jxhe/vae-lagging-encoder `text.py`).

The encoder lags behind the true posterior early in training, so the decoder learns to ignore z. While aggressive
mode is on, each outer step becomes

    repeat  (inner)  θ_enc ← θ_enc − ∇_enc loss(x')       x' = the current batch first, then fresh random batches
            every `check_every` inner steps: stop when the window's loss per token did not decrease
            (and after at most `max_inner` inner steps)
    then    (outer)  θ_dec ← θ_dec − ∇_dec loss(x)        the current batch, decoder only

with the same loss (compose_loss, the outer step's β) throughout and the gradient of all parameters clipped before
each update, as the reference does. After each epoch the validation MI is computed (He et al.'s `calc_mi`: the
estimator within each validation batch, averaged weighted by batch size; ablate.metrics.estimators.mutual_information with
the batch as aggregate); aggressive mode switches off for good the first time it is lower than the epoch before
(the first epoch compares with 0). Then training is plain VAE training.

Inner updates are counted apart (`train_inner_steps` in the result row): `train.epochs`, `train.max_steps` and
every β schedule count outer steps only. The reference's loop stops at 99 inner steps (`while sub_iter < 100`,
from 1); `max_inner` is the number of inner steps itself. Its state (on/off, last MI) is checkpointed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from ablate.core.seeds import derive
from ablate.metrics.estimators import mutual_information
from ablate.techniques.base import (
    Evaluated,
    Step,
    StepControl,
    Technique,
    TechniqueConfig,
    TrainContext,
)
from ablate.core.technique_registry import register


class AggressiveConfig(TechniqueConfig):
    max_inner: int = Field(100, ge=1, description="most encoder-only steps before each decoder step (He et al.: "
                                                  "100, their loop stops at 99)")
    check_every: int = Field(15, ge=1, description="inner steps per window of the loss-decrease check (He et al.: "
                                                   "15)")


class LossWindow:
    """He et al.'s stopping rule for the inner loop: after every `check_every` steps, the window's loss per token
    is compared with the previous window's (the first with 1e4, as in the reference); stop when it did not
    decrease."""

    def __init__(self, check_every: int) -> None:
        self.check_every = check_every
        self.previous, self.loss, self.tokens, self.steps = 1e4, 0.0, 0, 0

    def add(self, loss_sum: float, tokens: int) -> bool:
        """Record one inner step (its loss summed over the batch's sentences, its tokens); True: stop here."""
        self.loss, self.tokens, self.steps = self.loss + loss_sum, self.tokens + tokens, self.steps + 1
        if self.steps % self.check_every:
            return False
        current = self.loss / max(1, self.tokens)
        if self.previous - current < 0:
            return True
        self.previous, self.loss, self.tokens = current, 0.0, 0
        return False


@register
class Aggressive(Technique):
    """He et al. 2019: encoder-only inner steps until its loss stops falling, then one decoder step, until the
    validation MI stops rising (module docstring)."""

    name = "aggressive"
    order = 10  # see Technique.order; takes over the update
    version = 1
    paper = ("He et al. 2019 'Lagging Inference Networks and Posterior Collapse in Variational Autoencoders' "
             "(ICLR)")
    summary = "aggressive encoder training: inner encoder-only steps before each decoder step, until MI stops rising"
    Config = AggressiveConfig
    takes_over_step = True

    def __init__(self, config: AggressiveConfig, context: TrainContext) -> None:
        super().__init__(config, context)
        self.active = True
        self.last_mi = 0.0
        self.mi_history: list[float] = []

    def take_step(self, batch: Any, control: StepControl, step: Step) -> Evaluated | None:
        if not self.active or step.phase != "vae":
            return None
        window = LossWindow(self.config.check_every)
        inner = batch
        for _ in range(self.config.max_inner):
            evaluated = control.evaluate(inner)
            loss_sum = float(evaluated.objective.loss.detach()) * inner.size  # a host read, as the reference's
            control.update(evaluated, "encoder")
            control.count_inner(inner)
            if window.add(loss_sum, int(inner.dec_mask.sum())):
                break
            inner = control.random_batch()
        outer = control.evaluate(batch)
        control.update(outer, "decoder")
        return outer

    @torch.no_grad()
    def end_epoch(self, model: torch.nn.Module, valid_batches: list[Any]) -> None:
        if not self.active:
            return
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(derive(self.context.seed, "aggressive_mi", len(self.mi_history)))
        total, count = 0.0, 0
        for batch in valid_batches:
            mu, logvar = model.encode(batch.to(device))
            mi, _ = mutual_information(mu.double().cpu(), logvar.double().cpu(), generator=generator)
            total, count = total + mi * batch.size, count + batch.size
        mi = total / max(1, count)
        self.mi_history.append(mi)
        if not math.isfinite(mi) or mi - self.last_mi < 0:
            self.active = False
        self.last_mi = mi

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active, "last_mi": self.last_mi, "mi_history": list(self.mi_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = bool(state.get("active", True))
        self.last_mi = float(state.get("last_mi", 0.0))
        self.mi_history = list(state.get("mi_history", []))
