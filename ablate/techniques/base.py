"""The Technique interface and the one place where the training objective is assembled.

A technique is a remedy for posterior collapse with a strict config and a version. It plugs into the training
loop (ablate.engine.train) through optional hooks, called in this fixed order every optimiser step:

Within each hook, techniques are called in their declared `order` (`Technique.order`, ascending).

1. phase control   `wants_pretraining`, `start_phase`, `pretraining_finished`   (which phase, what trains)
2. corruption      `corrupt(batch)`                                             (training batches only)
3. KL weight       `kl_weight(step)`                                            (multiplied together)
4. KL transform    `kl_term(kl_per_dim, step)`                                  (at most one technique replaces it)
5. the update      `take_step(batch, control, step)`                            (at most one technique takes it
                                                                                 over, e.g. He et al.'s inner loop)
and after each epoch's validation `end_epoch(model, valid_batches)`; `posterior_transform` adds a module to the
model after its encoder (BN-VAE).

so that the whole objective reads (see `compose_loss`):

    loss = mean_i rec_i + β · KLterm,   β = train.kl_weight · Π_t β_t(step)

with rec_i the reconstruction NLL of sentence i *summed over its tokens* and, unless a technique replaces it,
KLterm = mean_i KL_i. Reported KL is always the plain KL, never the transformed term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from ablate.core.technique_registry import technique_config, techniques
from ablate.data.tokenize import SpecialIds


class TechniqueConfig(BaseModel):
    """Base of every technique's config: strict (unknown fields are errors), immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # finite numbers only


@dataclass(frozen=True)
class TrainContext:
    """What a technique may know about the run when it is built."""

    nz: int
    steps_per_epoch: int
    special_ids: SpecialIds  # of the decoder's vocabulary (and the encoder's, unless it has its own)
    seed: int = 0
    encoder_special_ids: SpecialIds | None = None  # an encoder with a tokenizer of its own (PairTokenizer)

    @property
    def encoder_specials(self) -> SpecialIds:
        """The special ids of the encoder's inputs."""
        return self.encoder_special_ids if self.encoder_special_ids is not None else self.special_ids


@dataclass(frozen=True)
class Step:
    """Where training is (a technique's read-only view of the trainer's TrainState): counted in optimiser steps.
    `phase_step` restarts at 0 when a phase begins."""

    global_step: int
    phase_step: int
    epoch: int
    phase: str  # "pretrain" | "vae"


@dataclass(frozen=True)
class PhaseProgress:
    """How far the current phase has come, for a technique deciding when pretraining ends (a read-only view of the
    trainer's TrainState)."""

    epochs: int
    steps: int
    valid_rec: list[float] = field(default_factory=list)  # validation reconstruction after each epoch


@dataclass
class LossParts:
    """Per-sentence pieces of the objective for one batch."""

    rec: Tensor  # [B] reconstruction NLL, nats, summed over tokens
    kl_per_dim: Tensor  # [B, nz] analytic KL per dimension
    mu: Tensor  # [B, nz]
    logvar: Tensor  # [B, nz]
    z: Tensor  # [B, nz]

    @property
    def kl(self) -> Tensor:
        return self.kl_per_dim.sum(-1)


class Technique:
    """A registered remedy. Subclasses set the class variables and override only the hooks they need."""

    name: ClassVar[str]
    # Position in the fixed order of application, declared by every technique (unique; checked at registration).
    # Every hook is called technique by technique in this order: it decides the sequence of corruptions and of
    # posterior transforms; β factors multiply (order-free), and at most one technique may replace the KL term or
    # take over the update, so those never depend on it.
    order: ClassVar[int]
    version: ClassVar[int] = 1
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[TechniqueConfig]] = TechniqueConfig
    replaces_kl_term: ClassVar[bool] = False

    def __init__(self, config: TechniqueConfig, context: TrainContext) -> None:
        self.config = config
        self.context = context

    # 1. phase control
    def wants_pretraining(self) -> bool:
        """True if this technique runs a first phase ('pretrain') before the VAE phase."""
        return False

    def pretraining_decays(self) -> bool:
        """True if its pretraining phase follows train.lr_decay on the validation rec and hands its best state on
        (Li et al. 2019's autoencoder, trained by text_beta.py with He et al.'s rule)."""
        return False

    def start_phase(self, phase: str, model: torch.nn.Module) -> None:
        """Called when a phase begins (freeze or reset parameters here)."""

    def pretraining_finished(self, progress: PhaseProgress) -> bool:
        """Consulted after every step and every epoch of the 'pretrain' phase."""
        return True

    def pretraining_budget(self, steps_per_epoch: int) -> int:
        """The most optimiser steps its pretraining phase can take (for the run's ETA; 0: no such phase)."""
        return 0

    def forces_zero_kl(self, step: Step) -> bool:
        """True while the KL weight must be 0 whatever the other techniques say (an autoencoder phase)."""
        return False

    # the model: a module applied to the posterior after the encoder (part of the model: saved, evaluated)
    @classmethod
    def posterior_transform(cls, config: TechniqueConfig, nz: int) -> torch.nn.Module | None:
        """A module (mu, logvar) → (mu, logvar) that the model applies after its encoder, or None."""
        return None

    # 2. corruption (training only)
    def corrupt(self, batch: Any, generator: torch.Generator) -> Any:
        return batch

    # 3. KL weight
    def kl_weight(self, step: Step) -> float:
        return 1.0

    # 4. KL transform
    def kl_term(self, kl_per_dim: Tensor, step: Step) -> Tensor:
        """The (scalar) KL term that replaces mean_i KL_i; only for techniques with replaces_kl_term."""
        raise NotImplementedError(f"{self.name} does not transform the KL term")

    # 5. the update (at most one technique): None leaves the usual step (one update of all parameters) to train.py
    takes_over_step: ClassVar[bool] = False

    def take_step(self, batch: Any, control: "StepControl", step: Step) -> "Evaluated | None":
        """Make this step's updates through `control` (the loss still comes from compose_loss) and return the
        outer update's parts and objective for the curves; or None for the usual step."""
        return None

    def end_epoch(self, model: torch.nn.Module, valid_batches: list[Any]) -> None:
        """Called after each epoch's validation, the model in eval mode (e.g. to decide on an epoch's MI)."""

    # resumable state
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class Objective:
    """The assembled loss of one batch and the numbers logged with it."""

    loss: Tensor
    beta: float
    kl_term: Tensor


@dataclass
class Evaluated:
    """One batch's loss pieces and its assembled objective."""

    parts: LossParts
    objective: Objective


@dataclass
class StepControl:
    """What train.py lends a technique that takes over the update (`take_step`).

    evaluate(batch)        the loss of a batch, assembled by compose_loss at the current (outer) step
    update(ev, params)     backward, clip the gradient of all parameters, step the optimiser on 'all', 'encoder' or
                           'decoder' parameters (the others' gradients are dropped first)
    random_batch()         a fresh training batch drawn uniformly from the epoch's batches, corrupted and on device
    count_inner(batch)     record an extra (inner) update, counted apart from the optimiser steps of the budget
    """

    evaluate: Callable[[Any], Evaluated]
    update: Callable[[Evaluated, str], None]
    random_batch: Callable[[], Any]
    count_inner: Callable[[Any], None]


def kl_weight(techniques: list[Technique], base: float, step: Step) -> float:
    """β = base · Π_t β_t(step), or 0 when a technique forces an autoencoder phase."""
    if any(t.forces_zero_kl(step) for t in techniques):
        return 0.0
    beta = base
    for technique in techniques:
        beta *= technique.kl_weight(step)
    return beta


def compose_loss(parts: LossParts, techniques: list[Technique], base_beta: float, step: Step) -> Objective:
    """loss = mean_i rec_i + β · KLterm (module docstring). rec is summed over tokens per sentence."""
    beta = kl_weight(techniques, base_beta, step)
    replacing = [t for t in techniques if t.replaces_kl_term]
    kl_term = replacing[0].kl_term(parts.kl_per_dim, step) if replacing else parts.kl.mean()
    loss = parts.rec.mean() + beta * kl_term
    return Objective(loss=loss, beta=beta, kl_term=kl_term.detach())


def build_techniques(resolved: dict[str, dict[str, Any]], context: TrainContext) -> list[Technique]:
    """Instantiate the configured techniques in the registry's fixed order."""
    return [cls(technique_config(name, resolved[name]), context) for name, cls in techniques().items()
            if name in resolved]


def posterior_transforms(resolved: dict[str, dict[str, Any]], nz: int) -> list[Any]:
    """The modules the configured techniques add after the encoder (e.g. BN-VAE), in the registry's order."""
    modules = []
    for name, cls in techniques().items():
        if name in resolved:
            module = cls.posterior_transform(technique_config(name, resolved[name]), nz)
            if module is not None:
                modules.append(module)
    return modules
