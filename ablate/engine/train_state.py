"""What a training run carries between steps and across a restart: its state (phase, epoch, step, learning rate and
decays, best validation), the optimiser, the learning-rate decay on a plateau (He et al. 2019, `text.py`), the
checkpoint, and a Ctrl-C that finishes the step before stopping."""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ablate.core.config import TrainConfig
from ablate.models.base import TextVAE
from ablate.results.safe_files import atomic_target
from ablate.techniques.base import PhaseProgress, Step, Technique


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exceeded train.divergence_threshold."""


@dataclass
class TrainState:
    """Everything needed to continue a run exactly (saved in checkpoints). The trainer's own, mutable record; what a
    technique sees of it are two read-only views: `as_step()` (where training is) and `as_phase_progress()` (how far
    the pretraining phase has come)."""

    global_step: int = 0
    phase: str = "vae"
    phase_step: int = 0
    epoch: int = 0
    epochs_in_phase: int = 0
    epoch_step: int = 0  # optimiser steps (groups of batches) done in the current epoch: a run stopped mid-epoch
    valid_rec: list[float] = field(default_factory=list)  # of the pretraining phase
    best_score: float = math.inf  # validation value of train.select_by
    best_pretrain_rec: float = math.inf  # a decaying pretraining phase: its best validation rec
    best_epoch: int = -1
    train_tokens: int = 0
    inner_steps: int = 0  # extra updates a technique made inside outer steps (aggressive), not in the budget
    lr_scale: float = 1.0  # train.lr_decay: the learning rate is train.lr × lr_scale
    decay_ref: float = math.inf  # He et al.'s opt_dict["best_loss"]
    not_improved: int = 0
    decays: int = 0
    train_seconds: float = 0.0
    finished: bool = False

    def as_step(self) -> Step:
        return Step(self.global_step, self.phase_step, self.epoch, self.phase)

    def as_phase_progress(self) -> PhaseProgress:
        return PhaseProgress(self.epochs_in_phase, self.phase_step, list(self.valid_rec))


@dataclass
class TrainResult:
    curves: list[dict[str, Any]]
    state: TrainState


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


def make_optimizer(model: TextVAE, cfg: TrainConfig, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Adam or SGD, in PyTorch's fused form where the parameters' device has it (one kernel for all parameters:
    on a 2-core CPU 4 ms instead of 12 ms per step for the 8M parameters of Li et al.'s PTB LSTM). Plain SGD
    steps the parameters the fused kernel would copy — a column-major one (12 ms for the 10k × 256 output weight,
    against 0.8 ms in place), one with a sparse gradient (which it refuses) — one at a time, in a second group:
    the same update, value for value (tests/test_gradients.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    lr = cfg.lr * lr_scale
    if cfg.optimizer == "sgd":
        sparse = {id(e.weight) for e in model.word_embeddings() if e.sparse}
        apart = [p for p in params if id(p) in sparse or not p.is_contiguous()]
        if fused and apart and cfg.momentum == 0 and cfg.weight_decay == 0:
            apart_ids = {id(p) for p in apart}
            together = [p for p in params if id(p) not in apart_ids]
            groups = ([{"params": together, "fused": True}] if together else []) + \
                [{"params": apart, "fused": False, "foreach": False}]
            return torch.optim.SGD(groups, lr=lr)
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused or None)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The optimiser's state from a checkpoint. A checkpoint of plain SGD (no state, one learning rate, set from
    the run's state) written with other parameter groups — before make_optimizer grouped them — is read as it
    stands: nothing in it is lost."""
    try:
        optimizer.load_state_dict(saved)
    except ValueError:
        stateless = isinstance(optimizer, torch.optim.SGD) and not saved.get("state") and all(
            group.get("momentum", 0) == 0 and group.get("weight_decay", 0) == 0 for group in optimizer.param_groups)
        if not stateless:
            raise


def save_checkpoint(path: Path, model: TextVAE, optimizer: torch.optim.Optimizer, techniques: list[Technique],
                     state: TrainState, best: dict[str, Any] | None, curves: list[dict[str, Any]],
                     generator: torch.Generator, best_pretrain: dict[str, Any] | None = None) -> None:
    """Atomic: write a temporary file in the same folder, then rename."""
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "techniques": [t.state_dict() for t in techniques], "state": asdict(state), "best": best,
               "best_pretrain": best_pretrain,
               "curves": curves, "torch_rng": torch.get_rng_state(), "corrupt_rng": generator.get_state()}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during training: the current step finishes, the state is saved, then
    KeyboardInterrupt — so an interrupted run continues from that step (`ablate run --resume`, a re-run sweep), not
    from its last epoch (a stopped sweep worker loses nothing either). A second signal of the same kind acts as it
    would have without this (Ctrl-C at once; SIGTERM by the handler before: a worker's exit, or the default).
    Only in the main thread, over Python's default SIGINT handler, and not where SIGTERM is ignored."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)
        term = signal.getsignal(signal.SIGTERM)
        if term is signal.SIG_DFL or callable(term):
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signum, self._previous.pop(signum))  # a second one: as before

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous.clear()
