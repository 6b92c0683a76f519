"""The training loop: phases, optimiser, clipping, validation every epoch, best state, checkpoints.

The objective is assembled in one place (ablate.techniques.base.compose_loss):
    loss = mean_i rec_i + β · KLterm + Σ extra,   rec_i = −log p(x_i|z_i) summed over the tokens of sentence i.
`train.epochs` and `train.max_steps` count the VAE phase; a pretraining phase (encoder_pretraining) comes first
and is counted apart, so runs with and without pretraining get the same VAE-phase budget.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ablate.config import TrainConfig
from ablate.data.batching import Batch, EncodedSplit, iterate_batches
from ablate.data.tokenize import Framing
from ablate.metrics import gaussian_kl_per_dim, sample_posterior
from ablate.models.base import TextVAE
from ablate.outputs import atomic_target, load_tensors
from ablate.techniques.base import (Evaluated, LossParts, PhaseProgress, Step, StepControl, Technique,
                                    compose_loss)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exceeded train.divergence_threshold."""


@dataclass
class TrainState:
    """Everything needed to continue a run exactly (saved in checkpoints)."""

    global_step: int = 0
    phase: str = "vae"
    phase_step: int = 0
    epoch: int = 0
    epochs_in_phase: int = 0
    valid_rec: list[float] = field(default_factory=list)  # of the pretraining phase
    best_score: float = math.inf  # validation value of train.select_by
    best_epoch: int = -1
    train_tokens: int = 0
    inner_steps: int = 0  # extra updates a technique made inside outer steps (aggressive), not in the budget
    lr_scale: float = 1.0  # train.lr_decay: the learning rate is train.lr × lr_scale
    decay_ref: float = math.inf  # He et al.'s opt_dict["best_loss"]
    not_improved: int = 0
    decays: int = 0
    train_seconds: float = 0.0
    finished: bool = False


@dataclass
class TrainResult:
    curves: list[dict[str, Any]]
    state: TrainState


SYNC_EVERY = 50  # training curves are read off the device every N steps and at each epoch's end


def forward_parts(model: TextVAE, batch: Batch, precision: str = "fp32") -> LossParts:
    """Encode, sample one z per sentence (reparameterised), score the sentence: the pieces of the loss.

    precision bf16 autocasts the networks; the posterior, z, KL and log-probabilities stay fp32.
    """
    with torch.autocast(batch.enc_ids.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        mu, logvar = model.encode(batch)
        mu, logvar = mu.float(), logvar.float()
        z = sample_posterior(mu, logvar)
        rec = -model.log_likelihood(batch, z).float()
    return LossParts(rec=rec, kl_per_dim=gaussian_kl_per_dim(mu, logvar), mu=mu, logvar=logvar, z=z)


def decay_on_plateau(state: TrainState, cfg: TrainConfig, valid_loss: float) -> bool:
    """He et al. 2019's rule after a VAE epoch (config.LRDecayConfig); True when the learning rate was decayed
    (the caller then restores the best state and starts a fresh optimiser)."""
    rule = cfg.lr_decay
    if valid_loss > state.decay_ref:
        state.not_improved += 1
        if state.not_improved >= rule.patience and state.epochs_in_phase > rule.min_epochs:
            state.decay_ref, state.not_improved = valid_loss, 0
            state.lr_scale *= rule.factor
            state.decays += 1
            return True
        return False
    state.not_improved, state.decay_ref = 0, valid_loss
    return False


class CurveBuffer:
    """Per-step training values kept on the device and read off in one transfer every SYNC_EVERY steps (each
    float(tensor) on a GPU would stall it). A non-finite or too large loss is caught at the next read."""

    def __init__(self, curves: list[dict[str, Any]], divergence_threshold: float) -> None:
        self.curves, self.threshold = curves, divergence_threshold
        self.meta: list[dict[str, Any]] = []
        self.values: list[Tensor] = []

    def add(self, meta: dict[str, Any], loss: Tensor, kl: Tensor, rec: Tensor) -> None:
        self.meta.append(meta)
        self.values.append(torch.stack([loss.detach().float(), kl.detach().float(), rec.detach().float()]))
        if len(self.values) >= SYNC_EVERY:
            self.flush()

    def flush(self) -> dict[str, Any] | None:
        """Append the buffered steps to the curves; return the last one (None when empty)."""
        if not self.values:
            return None
        values = torch.stack(self.values).cpu().tolist()
        for meta, (loss, kl, rec) in zip(self.meta, values):
            if not math.isfinite(loss) or loss > self.threshold:
                raise TrainingDiverged(f"loss {loss} at step {meta['step']} (epoch {meta['epoch'] + 1})")
            self.curves.append({**meta, "kl": kl, "rec": rec, "loss": loss})
        self.meta, self.values = [], []
        return self.curves[-1]


@torch.no_grad()
def validate(model: TextVAE, batches: list[Batch], device: torch.device) -> dict[str, float]:
    """Mean single-sample rec, KL and −ELBO per sentence over a split."""
    model.eval()
    rec = kl = 0.0
    count = 0
    for batch in batches:
        parts = forward_parts(model, batch.to(device))
        rec += float(parts.rec.sum())
        kl += float(parts.kl.sum())
        count += batch.size
    model.train()
    return {"rec": rec / count, "kl": kl / count, "nelbo": (rec + kl) / count}


def make_optimizer(model: TextVAE, cfg: TrainConfig, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Adam or SGD, in PyTorch's fused form where the parameters' device has it (one kernel for all parameters:
    on a 2-core CPU 4 ms instead of 12 ms per step for the 8M parameters of Li et al.'s PTB LSTM)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr * lr_scale, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused or None)
    return torch.optim.Adam(params, lr=cfg.lr * lr_scale, weight_decay=cfg.weight_decay, fused=fused or None)


def _save_checkpoint(path: Path, model: TextVAE, optimizer: torch.optim.Optimizer, techniques: list[Technique],
                     state: TrainState, best: dict[str, Any] | None, curves: list[dict[str, Any]],
                     generator: torch.Generator) -> None:
    """Atomic: write a temporary file in the same folder, then rename."""
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "techniques": [t.state_dict() for t in techniques], "state": asdict(state), "best": best,
               "curves": curves, "torch_rng": torch.get_rng_state(), "corrupt_rng": generator.get_state()}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)


def train(model: TextVAE, techniques: list[Technique], train_split: EncodedSplit, valid_split: EncodedSplit,
          framing: Framing, cfg: TrainConfig, device: torch.device, seed: int, eval_batch_size: int = 64,
          checkpoint: Path | None = None, progress: bool = True) -> TrainResult:
    """Train in place; on return the model holds the best VAE-phase state by `cfg.select_by` (validation)."""
    model.to(device).train()
    state = TrainState(phase="pretrain" if any(t.wants_pretraining() for t in techniques) else "vae")
    curves: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    generator = torch.Generator().manual_seed(seed + 7919)
    for technique in techniques:
        technique.start_phase(state.phase, model)
    optimizer = make_optimizer(model, cfg)

    if checkpoint is not None and checkpoint.exists():
        saved = load_tensors(checkpoint, "checkpoint", map_location=device)
        state = TrainState(**saved["state"])
        for technique, tech_state in zip(techniques, saved["techniques"]):
            technique.load_state_dict(tech_state)
            technique.start_phase(state.phase, model)
        model.load_state_dict(saved["model"])
        optimizer = make_optimizer(model, cfg, state.lr_scale)
        optimizer.load_state_dict(saved["optimizer"])
        best, curves = saved["best"], saved["curves"]
        torch.set_rng_state(saved["torch_rng"])
        generator.set_state(saved["corrupt_rng"])

    valid_batches = iterate_batches(valid_split, framing, eval_batch_size)
    pretrainers = [t for t in techniques if t.wants_pretraining()]
    vae_budget_done = lambda: (cfg.max_steps is not None and state.phase_step >= cfg.max_steps) or (  # noqa: E731
        cfg.max_steps is None and state.epochs_in_phase >= cfg.epochs) or (
        cfg.lr_decay is not None and state.decays >= cfg.lr_decay.max_decays)
    if state.phase == "vae" and vae_budget_done():
        state.finished = True

    taker = next((t for t in techniques if t.takes_over_step), None)

    def evaluate(batch: Batch, step: Step) -> Evaluated:
        """The one loss: forward pass, then compose_loss (ablate.techniques.base)."""
        parts = forward_parts(model, batch, cfg.precision)
        return Evaluated(parts, compose_loss(parts, techniques, cfg.kl_weight, step))

    def update(evaluated: Evaluated, params: str = "all") -> None:
        """Backward, clip all gradients, then step the optimiser on all, encoder or decoder parameters."""
        optimizer.zero_grad(set_to_none=True)
        evaluated.objective.loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if params != "all":
            for param in (model.decoder_parameters() if params == "encoder" else model.encoder_parameters()):
                param.grad = None  # an optimiser skips parameters without a gradient (their state stays)
        optimizer.step()

    def step_control(step: Step, batches: list[Batch]) -> StepControl:
        draws = random.Random(seed * 1_000_003 + state.global_step)

        def random_batch() -> Batch:
            batch = batches[draws.randrange(len(batches))]
            for technique in techniques:
                batch = technique.corrupt(batch, generator)
            return batch.to(device, non_blocking=True)

        def count_inner(batch: Batch) -> None:
            state.inner_steps += 1
            state.train_tokens += int(batch.dec_mask.sum())

        return StepControl(evaluate=lambda b: evaluate(b, step), update=update, random_batch=random_batch,
                           count_inner=count_inner)

    while not state.finished:
        batches = iterate_batches(train_split, framing, cfg.batch_size, random.Random(seed * 100_003 + state.epoch))
        switch_phase = False
        started = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {state.epoch + 1} [{state.phase}]", leave=False, disable=not progress,
                   dynamic_ncols=True)
        buffer = CurveBuffer(curves, cfg.divergence_threshold)
        for batch in bar:
            step = Step(state.global_step, state.phase_step, state.epoch, state.phase)
            for technique in techniques:
                batch = technique.corrupt(batch, generator)
            state.train_tokens += int(batch.dec_mask.sum())  # counted on the host copy
            batch = batch.to(device, non_blocking=True)
            evaluated = taker.take_step(batch, step_control(step, batches), step) if taker is not None else None
            if evaluated is None:
                evaluated = evaluate(batch, step)
                update(evaluated, "all")
            parts, objective = evaluated.parts, evaluated.objective

            buffer.add({"step": state.global_step, "epoch": state.epoch, "phase": state.phase, "split": "train",
                        "beta": objective.beta}, objective.loss, parts.kl.mean(), parts.rec.mean())
            state.global_step += 1
            state.phase_step += 1
            if state.global_step % SYNC_EVERY == 0 and (last := buffer.flush()) is not None:
                bar.set_postfix(loss=f"{last['loss']:.2f}", kl=f"{last['kl']:.2f}", beta=f"{last['beta']:.2f}",
                                refresh=False)
            if state.phase == "pretrain" and all(
                    t.pretraining_finished(PhaseProgress(state.epochs_in_phase, state.phase_step, state.valid_rec))
                    for t in pretrainers):
                switch_phase = True
                break
            if state.phase == "vae" and cfg.max_steps is not None and state.phase_step >= cfg.max_steps:
                break
        buffer.flush()
        bar.close()
        state.train_seconds += time.perf_counter() - started

        valid = validate(model, valid_batches, device)
        model.eval()
        for technique in techniques:
            technique.end_epoch(model, valid_batches)
        model.train()
        curves.append({"step": state.global_step, "epoch": state.epoch, "phase": state.phase, "split": "valid",
                       "beta": float("nan"), "kl": valid["kl"], "rec": valid["rec"], "loss": valid["nelbo"]})
        state.epoch += 1
        state.epochs_in_phase += 1
        if state.phase == "pretrain":
            state.valid_rec.append(valid["rec"])
            progress_now = PhaseProgress(state.epochs_in_phase, state.phase_step, state.valid_rec)
            switch_phase = switch_phase or all(t.pretraining_finished(progress_now) for t in pretrainers)
        else:
            if cfg.select_by == "last" or valid[cfg.select_by] < state.best_score:
                state.best_score, state.best_epoch = valid[cfg.select_by], state.epoch
                best = copy.deepcopy(model.state_dict())
            if cfg.lr_decay is not None and decay_on_plateau(state, cfg, valid["nelbo"]):
                model.load_state_dict(best)
                optimizer = make_optimizer(model, cfg, state.lr_scale)
        if progress:
            tqdm.write(f"epoch {state.epoch} [{state.phase}] valid rec {valid['rec']:.2f} kl {valid['kl']:.3f} "
                       f"-elbo {valid['nelbo']:.2f}")

        if switch_phase:
            state.phase, state.phase_step, state.epochs_in_phase = "vae", 0, 0
            for technique in techniques:
                technique.start_phase("vae", model)
            optimizer = make_optimizer(model, cfg, state.lr_scale)
        if state.phase == "vae" and vae_budget_done():
            state.finished = True
        if checkpoint is not None and cfg.checkpoint_every_epoch:
            _save_checkpoint(checkpoint, model, optimizer, techniques, state, best, curves, generator)

    if best is not None:
        model.load_state_dict(best)
    return TrainResult(curves=curves, state=state)
