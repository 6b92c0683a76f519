"""The training loop: phases, optimiser, clipping, validation every epoch, best state, checkpoints.

The objective is assembled in one place (ablate.techniques.base.compose_loss):
    loss = mean_i rec_i + β · KLterm + Σ extra,   rec_i = −log p(x_i|z_i) summed over the tokens of sentence i.
`train.epochs` and `train.max_steps` count the VAE phase; a pretraining phase (encoder_pretraining) comes first
and is counted apart, so runs with and without pretraining get the same VAE-phase budget.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ablate.core.config import TrainConfig
from ablate.core.progress import RunProgress
from ablate.core.seeds import derive
from ablate.data.batching import Batch, EncodedSplit, batches_per_epoch, iterate_batches
from ablate.data.tokenize import Framing
from ablate.engine.curves import (
    LIVE_EARLY,
    SYNC_EVERY,
    CurveBuffer,
    epoch_point,
    step_detail,
)
from ablate.engine.gradients import clip_grad_norm_, sparse_embeddings_allowed, use_sparse_embedding_grads
from ablate.engine.train_state import (
    StopRequest,
    TrainResult,
    TrainState,
    decay_on_plateau,
    load_optimizer_state,
    make_optimizer,
    save_checkpoint,
)
from ablate.metrics.estimators import gaussian_kl_per_dim, sample_posterior
from ablate.models.base import TextVAE
from ablate.models.freeze import freeze
from ablate.models.kernels import active
from ablate.results.safe_files import load_tensors
from ablate.techniques.base import (
    Evaluated,
    LossParts,
    Objective,
    Step,
    StepControl,
    Technique,
    compose_loss,
)

PROGRESS_SECONDS = 120.0  # how often a run tells on_progress where its epoch stands (a sweep's journal gets a line)


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


@torch.no_grad()
def validate(model: TextVAE, batches: list[Batch], device: torch.device) -> dict[str, float]:
    """Mean single-sample rec, KL and −ELBO per sentence over a split, and the encoder's spread: mu_var, the mean
    over dimensions of Var_x E[z_j] (unbiased), and au, the dimensions with Var_x E[z_j] ≥ 0.01 (Burda et al.
    2016)."""
    model.eval()
    rec = kl = 0.0
    count = 0
    mus = []
    for batch in batches:
        parts = forward_parts(model, batch.to(device))
        rec += float(parts.rec.sum())
        kl += float(parts.kl.sum())
        count += batch.size
        mus.append(parts.mu.double().cpu())
    model.train()
    mu = torch.cat(mus) if mus else torch.zeros(0, 0, dtype=torch.float64)
    var = mu.var(0, unbiased=True) if mu.shape[0] > 1 and mu.shape[1] > 0 else None
    return {"rec": rec / count, "kl": kl / count, "nelbo": (rec + kl) / count,
            "mu_var": float(var.mean()) if var is not None else float("nan"),
            "au": float((var >= 0.01).sum()) if var is not None else float("nan")}


class Trainer:
    """The state of one training run and its steps; `train` below is the loop that drives it."""

    def __init__(self, model: TextVAE, techniques: list[Technique], train_split: EncodedSplit,
                 valid_split: EncodedSplit, framing: Framing, cfg: TrainConfig, device: torch.device, seed: int,
                 eval_batch_size: int):
        self.model, self.techniques, self.cfg, self.device, self.seed = model, techniques, cfg, device, seed
        self.train_split, self.framing = train_split, framing
        model.to(device).train()
        self.state = TrainState(phase="pretrain" if any(t.wants_pretraining() for t in techniques) else "vae")
        self.curves: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # the selected VAE-phase state (train.select_by)
        self.best_pretrain: dict[str, Any] | None = None  # a decaying pretraining phase's best state (valid rec)
        self.generator = torch.Generator().manual_seed(derive(seed, "corruptions"))
        self.start_phase()
        sparse = active().embedding_grads == "sparse" and sparse_embeddings_allowed(model, cfg)
        use_sparse_embedding_grads(model, sparse)  # before the optimiser: it steps sparse gradients apart
        self.optimizer = make_optimizer(model, cfg)
        self.valid_batches = iterate_batches(valid_split, framing, eval_batch_size)
        self.pretrainers = [t for t in techniques if t.wants_pretraining()]
        self.pretrain_decays = cfg.lr_decay is not None and any(t.pretraining_decays() for t in self.pretrainers)
        self.taker = next((t for t in techniques if t.takes_over_step), None)
        self.checkpoint: Path | None = None  # where save() writes (train() sets it)
        self.saved_at = time.monotonic()
        self.timed_since: float | None = None  # while an epoch's steps run: when train_seconds was last brought up
        self.on_progress: Callable[[dict[str, Any]], None] | None = None  # where the epoch stands (train() sets it)
        self.progress_at = time.monotonic()

    def start_phase(self) -> None:
        """The techniques' set-up of the current phase (they may freeze or unfreeze parts), then train.freeze."""
        for technique in self.techniques:
            technique.start_phase(self.state.phase, self.model)
        freeze(self.model, self.cfg.freeze)

    # -- checkpoints ---------------------------------------------------------------------------------------

    def restore(self, checkpoint: Path | None) -> None:
        """Continue exactly where a checkpoint left off (state, weights, optimiser, techniques, RNGs)."""
        if checkpoint is None or not checkpoint.exists():
            return
        saved = load_tensors(checkpoint, "checkpoint", map_location=self.device)
        self.state = TrainState(**saved["state"])
        for technique, tech_state in zip(self.techniques, saved["techniques"]):
            technique.load_state_dict(tech_state)
        self.start_phase()
        self.model.load_state_dict(saved["model"])
        self.optimizer = make_optimizer(self.model, self.cfg, self.state.lr_scale)
        load_optimizer_state(self.optimizer, saved["optimizer"])
        self.best, self.curves = saved["best"], saved["curves"]
        self.best_pretrain = saved.get("best_pretrain")
        torch.set_rng_state(saved["torch_rng"])
        self.generator.set_state(saved["corrupt_rng"])

    def save(self, checkpoint: Path | None) -> None:
        if checkpoint is not None and self.cfg.checkpoint_every_epoch:
            save_checkpoint(checkpoint, self.model, self.optimizer, self.techniques, self.state, self.best,
                             self.curves, self.generator, self.best_pretrain)
            self.saved_at = time.monotonic()

    def save_mid_epoch_if_due(self, buffer: CurveBuffer) -> None:
        """train.checkpoint_minutes: the state between two steps of an epoch (its curve points first), from which
        a resumed run continues with the next step exactly as an uninterrupted one would."""
        minutes = self.cfg.checkpoint_minutes
        if self.checkpoint is None or minutes is None or time.monotonic() - self.saved_at < 60 * minutes:
            return
        buffer.flush()
        self.bank_time()  # a run resumed from here counts the steps before it (aggressive's epochs span hours)
        self.save(self.checkpoint)

    def report_progress_if_due(self, steps: int) -> None:
        """At most every PROGRESS_SECONDS: where the current epoch stands (epoch, phase, step of `steps`, inner steps
        so far) to `on_progress` — a sweep's `ablate status` shows it, so an epoch of hours visibly moves."""
        if self.on_progress is None or time.monotonic() - self.progress_at < PROGRESS_SECONDS:
            return
        self.progress_at = time.monotonic()
        state = self.state
        self.on_progress({"epoch": state.epoch, "phase": state.phase, "step": state.epoch_step, "steps": steps,
                          "inner_steps": state.inner_steps})

    def bank_time(self) -> None:
        """Add the training time since the last call (or the epoch's start) to state.train_seconds."""
        if self.timed_since is not None:
            now = time.perf_counter()
            self.state.train_seconds += now - self.timed_since
            self.timed_since = now

    # -- one optimiser step ----------------------------------------------------------------------------------

    def evaluate(self, batch: Batch, step: Step) -> Evaluated:
        """The one loss: forward pass, then compose_loss (ablate.techniques.base)."""
        parts = forward_parts(self.model, batch, self.cfg.precision)
        return Evaluated(parts, compose_loss(parts, self.techniques, self.cfg.kl_weight, step))

    def update(self, evaluated: Evaluated, params: str = "all") -> None:
        """Backward, clip all gradients, then step the optimiser on all, encoder or decoder parameters."""
        self.optimizer.zero_grad(set_to_none=True)
        evaluated.objective.loss.backward()
        self.apply_gradient(params)

    def apply_gradient(self, params: str = "all") -> None:
        """Clip all gradients, then step the optimiser on all, encoder or decoder parameters."""
        if self.cfg.grad_clip is not None:
            clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if params != "all":
            for param in (self.model.decoder_parameters() if params == "encoder" else
                          self.model.encoder_parameters()):
                param.grad = None  # an optimiser skips parameters without a gradient (their state stays)
        self.optimizer.step()

    def step_control(self, step: Step, batches: list[Batch]) -> StepControl:
        """What a technique that takes over the update may do (He et al.'s inner loop)."""
        draws = random.Random(derive(self.seed, "inner_batches", self.state.global_step))

        def random_batch() -> Batch:
            batch = batches[draws.randrange(len(batches))]
            for technique in self.techniques:
                batch = technique.corrupt(batch, self.generator)
            return batch.to(self.device, non_blocking=True)

        def count_inner(batch: Batch) -> None:
            self.state.inner_steps += 1
            self.state.train_tokens += int(batch.dec_mask.sum())

        return StepControl(evaluate=lambda b: self.evaluate(b, step), update=self.update,
                           random_batch=random_batch, count_inner=count_inner)

    def step(self, group: list[Batch], batches: list[Batch]) -> Evaluated:
        """Corrupt (training batches only), then one update: the usual one, or a technique's own. A group of
        several batches (train.grad_accum) is one update with their gradients averaged by sentence."""
        step = self.state.as_step()
        group = [self.training_batch(batch) for batch in group]
        if len(group) > 1:
            return self.accumulated_step(group, step)
        batch = group[0]
        evaluated = self.taker.take_step(batch, self.step_control(step, batches), step) if self.taker else None
        if evaluated is None:
            evaluated = self.evaluate(batch, step)
            self.update(evaluated, "all")
        return evaluated

    def training_batch(self, batch: Batch) -> Batch:
        for technique in self.techniques:
            batch = technique.corrupt(batch, self.generator)
        self.state.train_tokens += int(batch.dec_mask.sum())  # counted on the host copy
        return batch.to(self.device, non_blocking=True)

    def accumulated_step(self, group: list[Batch], step: Step) -> Evaluated:
        """One optimiser step on Σ_g (B_g / B) · loss_g: each batch's loss is a mean over its sentences, so this is
        the mean over the group's B sentences, one batch's activations in memory at a time."""
        self.optimizer.zero_grad(set_to_none=True)
        total = sum(batch.size for batch in group)
        done: list[Evaluated] = []
        for batch in group:
            evaluated = self.evaluate(batch, step)
            (evaluated.objective.loss * (batch.size / total)).backward()
            done.append(evaluated)
        self.apply_gradient("all")
        return merged(done, [batch.size / total for batch in group])

    # -- one epoch -------------------------------------------------------------------------------------------

    def phase_done(self) -> bool:
        """Whether the pretraining techniques all say their phase is over."""
        progress = self.state.as_phase_progress()
        return all(t.pretraining_finished(progress) for t in self.pretrainers)

    def vae_budget_done(self) -> bool:
        cfg, state = self.cfg, self.state
        return ((cfg.max_steps is not None and state.phase_step >= cfg.max_steps)
                or (cfg.max_steps is None and state.epochs_in_phase >= cfg.epochs)
                or (cfg.lr_decay is not None and state.decays >= cfg.lr_decay.max_decays))

    def train_epoch(self, progress: RunProgress, stop: StopRequest | None = None) -> bool:
        """Optimiser steps over one shuffled pass of train (or until the phase or step budget ends, or `stop` is
        requested: then `state.epoch_step` says where the pass continues). Returns whether pretraining ended
        during the pass."""
        state, cfg = self.state, self.cfg
        batches = iterate_batches(self.train_split, self.framing, cfg.batch_size,
                                  random.Random(derive(self.seed, "batch_order", state.epoch)),
                                  one_length=cfg.batching == "one_length")
        groups = [batches[i:i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
        self.timed_since = time.perf_counter()
        planned = f"/{state.epoch - state.epochs_in_phase + cfg.epochs}" \
            if state.phase == "vae" and cfg.max_steps is None else ""
        progress.begin(f"epoch {state.epoch + 1}{planned} [{state.phase}]")
        buffer = CurveBuffer(self.curves, cfg.divergence_threshold)
        switch_phase = ended = False
        for group in groups[state.epoch_step:]:  # a run stopped mid-epoch continues with its next step
            evaluated = self.step(group, batches)
            parts, objective = evaluated.parts, evaluated.objective
            read = buffer.add({"step": state.global_step, "epoch": state.epoch, "phase": state.phase,
                               "split": "train", "beta": objective.beta}, objective.loss, parts.kl.mean(),
                              parts.rec.mean())
            if read is None and state.phase_step < SYNC_EVERY and state.phase_step in LIVE_EARLY:
                read = buffer.flush()  # a short run or a new phase shows its values before SYNC_EVERY steps
            state.global_step += 1
            state.phase_step += 1
            state.epoch_step += 1
            progress.step(step_detail(read))
            if state.phase == "pretrain" and self.phase_done():
                switch_phase = ended = True
                break
            if state.phase == "vae" and cfg.max_steps is not None and state.phase_step >= cfg.max_steps:
                ended = True
                break
            if stop is not None and stop.requested:
                break
            self.save_mid_epoch_if_due(buffer)
            self.report_progress_if_due(len(groups))
        else:
            ended = True
        if ended:
            state.epoch_step = 0
        buffer.flush()
        progress.pause()
        self.bank_time()
        self.timed_since = None
        return switch_phase

    def end_epoch(self, progress: RunProgress) -> bool:
        """Validation, the techniques' end of epoch, the curve point, the selected state and He et al.'s decay
        rule. Returns whether pretraining is over."""
        state, cfg, model = self.state, self.cfg, self.model
        started = time.perf_counter()
        progress.begin(f"validate epoch {state.epoch + 1}")  # the line says what runs, not a frozen ETA
        valid = validate(model, self.valid_batches, self.device)
        progress.validated(time.perf_counter() - started, sum(b.size for b in self.valid_batches),
                           sum(int(b.dec_mask.sum()) for b in self.valid_batches))
        progress.pause()
        model.eval()
        for technique in self.techniques:
            technique.end_epoch(model, self.valid_batches)
        model.train()
        self.curves.append({"step": state.global_step, "epoch": state.epoch, "phase": state.phase, "split": "valid",
                            "beta": float("nan"), "kl": valid["kl"], "rec": valid["rec"], "loss": valid["nelbo"],
                            "mu_var": valid["mu_var"], "au": valid["au"]})
        state.epoch += 1
        state.epochs_in_phase += 1
        pretraining_over = False
        if state.phase == "pretrain":
            state.valid_rec.append(valid["rec"])
            pretraining_over = self.phase_done()
            if self.pretrain_decays:  # Li et al.'s text_beta.py: best AE kept, He et al.'s rule on the valid rec
                if valid["rec"] < state.best_pretrain_rec:
                    state.best_pretrain_rec = valid["rec"]
                    self.best_pretrain = copy.deepcopy(model.state_dict())
                if decay_on_plateau(state, cfg, valid["rec"]):
                    model.load_state_dict(self.best_pretrain)
                    self.optimizer = make_optimizer(model, cfg, state.lr_scale)
                pretraining_over |= state.decays >= cfg.lr_decay.max_decays
        else:
            if cfg.select_by == "last" or valid[cfg.select_by] < state.best_score:
                state.best_score, state.best_epoch = valid[cfg.select_by], state.epoch
                self.best = copy.deepcopy(model.state_dict())
            if cfg.lr_decay is not None and decay_on_plateau(state, cfg, valid["nelbo"]):
                model.load_state_dict(self.best)
                self.optimizer = make_optimizer(model, cfg, state.lr_scale)
        progress.write(f"epoch {state.epoch} [{state.phase}] valid rec {valid['rec']:.2f} kl {valid['kl']:.3f} "
                       f"-elbo {valid['nelbo']:.2f}")
        return pretraining_over

    def start_vae_phase(self) -> None:
        state = self.state
        state.phase, state.phase_step, state.epochs_in_phase = "vae", 0, 0
        if self.pretrain_decays:  # the VAE phase starts from the best autoencoder with a fresh decay rule
            if self.best_pretrain is not None:
                self.model.load_state_dict(self.best_pretrain)
            state.lr_scale, state.decay_ref, state.not_improved, state.decays = 1.0, math.inf, 0, 0
        self.start_phase()
        self.optimizer = make_optimizer(self.model, self.cfg, self.state.lr_scale)


def merged(evaluated: list[Evaluated], weights: list[float]) -> Evaluated:
    """The batches of one accumulated step as one: their sentences' pieces side by side, the weighted loss."""
    parts = [e.parts for e in evaluated]
    cat = {key: torch.cat([getattr(p, key).detach() for p in parts])
           for key in ("rec", "kl_per_dim", "mu", "logvar", "z")}
    last = evaluated[-1].objective
    loss = sum(w * e.objective.loss.detach() for w, e in zip(weights, evaluated))
    kl_term = sum(w * e.objective.kl_term.detach() for w, e in zip(weights, evaluated))
    return Evaluated(LossParts(**cat), Objective(loss=loss, beta=last.beta, kl_term=kl_term))


def planned_steps(cfg: TrainConfig, techniques: list[Technique], steps_per_epoch: int, state: TrainState) -> int:
    """The most optimiser steps a run can take (its ETA's training part): the pretraining phase's budget, if any
    and not over, then the VAE phase's (train.max_steps, or epochs × steps per epoch); He et al.'s decay rule may
    stop it earlier."""
    vae = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    pretrain = max((t.pretraining_budget(steps_per_epoch) for t in techniques), default=0)
    return (pretrain if state.phase == "pretrain" else state.global_step - state.phase_step) + vae


def train(model: TextVAE, techniques: list[Technique], train_split: EncodedSplit, valid_split: EncodedSplit,
          framing: Framing, cfg: TrainConfig, device: torch.device, seed: int, eval_batch_size: int = 64,
          checkpoint: Path | None = None, progress: bool | RunProgress = True,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_progress: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train in place; on return the model holds the best VAE-phase state by `cfg.select_by` (validation).
    `progress`: a line for the whole run (ablate.core.progress; True: one for training alone). `on_epoch` gets each
    epoch's validation point (`epoch_point`: the curve row and the epoch's training means); `on_progress`, at most
    every PROGRESS_SECONDS, where the epoch stands (Trainer.report_progress_if_due)."""
    run = Trainer(model, techniques, train_split, valid_split, framing, cfg, device, seed, eval_batch_size)
    run.on_progress = on_progress
    run.restore(checkpoint)
    run.checkpoint = checkpoint
    state = run.state
    if not isinstance(progress, RunProgress):
        progress = RunProgress(bool(progress), 0)
    batches = batches_per_epoch(train_split, cfg.batch_size, one_length=cfg.batching == "one_length")
    progress.plan_more(planned_steps(cfg, techniques, -(-batches // cfg.grad_accum), state))
    progress.resumed(state.global_step)
    if state.phase == "vae" and run.vae_budget_done():
        state.finished = True
    with StopRequest() as stop:
        _train_loop(run, progress, checkpoint, on_epoch, stop)
    if run.best is not None:
        model.load_state_dict(run.best)
    return TrainResult(curves=run.curves, state=state)


def _train_loop(run: Trainer, progress: RunProgress, checkpoint: Path | None,
                on_epoch: Callable[[dict[str, Any]], None] | None, stop: StopRequest) -> None:
    state = run.state
    while not state.finished:
        switch_phase = run.train_epoch(progress, stop)  # optimiser steps over one shuffled pass of train (one line)
        if stop.requested and state.epoch_step:       # Ctrl-C mid-epoch: keep this step's state, then stop
            run.save(checkpoint)
            raise KeyboardInterrupt
        switch_phase |= run.end_epoch(progress)       # validation, selected state, decay rule
        if on_epoch is not None:
            on_epoch(epoch_point(run.curves))         # live: the sweep's Optuna trial, TensorBoard
        if switch_phase:                              # pretraining → VAE (techniques reset what they need)
            run.start_vae_phase()
        if state.phase == "vae" and run.vae_budget_done():
            state.finished = True
        run.save(checkpoint)                          # every epoch: a killed run continues from here
        if stop.requested:
            raise KeyboardInterrupt
