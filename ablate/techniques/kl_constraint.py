"""KL constraint (Prokhorov et al. 2019, "On the Importance of the Kullback-Leibler Divergence Term in Variational
Autoencoders for Text Generation"): the KL term is replaced by its distance to a target rate,

    loss = mean_i rec_i + β · |KL̄ − C_t|,   KL̄ = (1/B) Σ_i KL_i (batch mean),   C_t = min(C, C · t / n),

t the optimiser step of the current phase and n = `ramp_steps` (their scripts: 2 epochs; C ∈ {3, 15, 60, 100},
β = 1). Below C_t the gradient pushes the KL up, above it down, so the model is held at a chosen rate.
β is applied as this technique's KL-weight factor (it multiplies with any other, and is logged as β).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import Tensor

from ablate.techniques.base import Step, Technique, TechniqueConfig, TrainContext
from ablate.core.technique_registry import register

DEFAULT_RAMP_EPOCHS = 2.0  # Prokhorov et al. 2019 scripts


class KLConstraintConfig(TechniqueConfig):
    C: float = Field(..., ge=0, description="target KL in nats per sentence (Prokhorov et al.: 3, 15, 60, 100)")
    beta: float = Field(1.0, gt=0, description="weight of |KL̄ − C_t| (Prokhorov et al.: 1)")
    ramp_steps: int | None = Field(None, ge=1, description="n, steps over which C_t rises 0 → C (default 2 epochs)")
    ramp_epochs: float | None = Field(None, gt=0, description="n in epochs, instead of ramp_steps (default 2)")

    @model_validator(mode="after")
    def _one_ramp(self) -> "KLConstraintConfig":
        if self.ramp_steps is not None and self.ramp_epochs is not None:
            raise ValueError("give ramp_steps or ramp_epochs, not both")
        return self


def target_rate(t: int, C: float, ramp_steps: int) -> float:
    """Prokhorov et al. 2019: C_t = min(C, C · t / n)."""
    return min(C, C * t / ramp_steps)


def constraint_term(kl_per_dim: Tensor, target: float) -> Tensor:
    """|KL̄ − C_t| with KL̄ the batch-mean KL of kl_per_dim [B, nz] (Prokhorov et al. 2019)."""
    return (kl_per_dim.sum(-1).mean() - target).abs()


@register
class KLConstraint(Technique):
    """Prokhorov et al. 2019: KLterm = |KL̄ − C_t|, weighted by β (module docstring)."""

    name = "kl_constraint"
    order = 70  # see Technique.order; replaces the KL term
    version = 1
    paper = ("Prokhorov et al. 2019 'On the Importance of the Kullback-Leibler Divergence Term in Variational "
             "Autoencoders for Text Generation' (WNGT)")
    summary = "hold the KL at a target C: KL term = β·|KL̄ − C_t|, C_t ramped 0 → C"
    Config = KLConstraintConfig
    replaces_kl_term = True

    def __init__(self, config: KLConstraintConfig, context: TrainContext) -> None:
        super().__init__(config, context)
        if config.ramp_steps is not None:
            self.ramp_steps = config.ramp_steps
        else:
            epochs = config.ramp_epochs if config.ramp_epochs is not None else DEFAULT_RAMP_EPOCHS
            self.ramp_steps = max(1, round(epochs * max(1, context.steps_per_epoch)))

    def target(self, t: int) -> float:
        return target_rate(t, self.config.C, self.ramp_steps)

    def kl_weight(self, step: Step) -> float:
        return self.config.beta

    def kl_term(self, kl_per_dim: Tensor, step: Step) -> Tensor:
        return constraint_term(kl_per_dim, self.target(step.phase_step))
