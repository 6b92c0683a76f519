"""KL annealing: a schedule β_t multiplying the KL term, loss = rec + β_t · KL.

t counts optimiser steps of the current phase (`Step.phase_step`), so a schedule starts at the first step of the
VAE phase when an encoder-pretraining phase comes first (during pretraining β is forced to 0 anyway).

Schedules (each documented with its formula on its function below):

- constant        β = beta                                            (β-VAE; He et al. 2019 sweep 0.2 … 0.8)
- linear          β = min(1, start + (1 − start) · t / W)             (He et al. 2019, Li et al. 2019: W = 10 epochs)
- sigmoid         β = 1 / (1 + exp(−k (t − x0)))                      (Bowman et al. 2016; k = 0.0025, x0 = 2500)
- cyclical        M cycles over T steps, rising over a ratio R of each (Fu et al. 2019; M = 4, R = 0.5)
- cyclical_zero   each cycle: β = 0 for a fraction r0, then a linear rise over ra, then 1 (Optimus; 0.5, 0.25)

Step counts may be given in steps or in epochs (converted with the run's steps per epoch); a field that does not
belong to the chosen schedule is an error, so a config says exactly what it does.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from ablate.techniques.base import Step, Technique, TechniqueConfig, TrainContext
from ablate.core.technique_registry import register

SCHEDULE_FIELDS: dict[str, tuple[str, ...]] = {
    "constant": ("beta",),
    "linear": ("start", "warmup_steps", "warmup_epochs"),
    "sigmoid": ("k", "x0"),
    "cyclical": ("total_steps", "total_epochs", "n_cycles", "ratio", "shape"),
    "cyclical_zero": ("total_steps", "total_epochs", "n_cycles", "ratio_zero", "ratio_increase"),
}

# Defaults filled in for the fields of the chosen schedule (None elsewhere), so the resolved config is explicit.
SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "constant": {},
    "linear": {"start": 0.0},
    "sigmoid": {"k": 0.0025, "x0": 2500.0},
    "cyclical": {"n_cycles": 4, "ratio": 0.5, "shape": "linear"},
    "cyclical_zero": {"n_cycles": 4, "ratio_zero": 0.5, "ratio_increase": 0.25},
}

DEFAULT_WARMUP_EPOCHS = 10.0  # He et al. 2019 / Li et al. 2019: 0 → 1 over 10 epochs
DEFAULT_TOTAL_EPOCHS = 10.0  # cyclical: M cycles spread over 10 epochs unless told (Fu et al.: the whole training)


class KLAnnealingConfig(TechniqueConfig):
    schedule: Literal["constant", "linear", "sigmoid", "cyclical", "cyclical_zero"] = Field(
        "linear", description="constant | linear | sigmoid | cyclical | cyclical_zero")
    beta: float | None = Field(None, ge=0, description="constant: the fixed weight (He et al.: 0.2, 0.4, 0.6, 0.8); "
                                                        "required for constant")
    start: float | None = Field(None, ge=0, le=1, description="linear: β at step 0, rising to 1 (default 0.0)")
    warmup_steps: int | None = Field(None, ge=1, description="linear: steps from start to 1 (or warmup_epochs)")
    warmup_epochs: float | None = Field(None, gt=0, description="linear: warm-up in epochs (default 10, He/Li)")
    k: float | None = Field(None, gt=0, description="sigmoid: slope per step (default 0.0025, Bowman et al.)")
    x0: float | None = Field(None, description="sigmoid: midpoint step, β = 0.5 there (default 2500)")
    total_steps: int | None = Field(None, ge=1, description="cyclical*: T, steps covered by the M cycles; β = 1 "
                                                            "after T (or total_epochs)")
    total_epochs: float | None = Field(None, gt=0, description="cyclical*: T in epochs (default 10; set it to the "
                                                               "training length as Fu et al. do)")
    n_cycles: int | None = Field(None, ge=1, description="cyclical*: M, number of cycles (default 4)")
    ratio: float | None = Field(None, gt=0, le=1, description="cyclical: R, fraction of a cycle spent rising "
                                                              "(default 0.5)")
    shape: Literal["linear", "cosine", "sigmoid"] | None = Field(
        None, description="cyclical: rise f(v), linear v | cosine ½−½cos(πv) | sigmoid 1/(1+e^−(12v−6)) "
                          "(default linear)")
    ratio_zero: float | None = Field(None, ge=0, lt=1, description="cyclical_zero: fraction of a cycle at β = 0 "
                                                                   "(default 0.5)")
    ratio_increase: float | None = Field(None, gt=0, le=1, description="cyclical_zero: fraction of a cycle "
                                                                       "rising 0 → 1 (default 0.25)")

    @model_validator(mode="before")
    @classmethod
    def _only_own_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        schedule = data.get("schedule", "linear")
        if schedule not in SCHEDULE_FIELDS:
            return data  # the Literal reports it
        own = SCHEDULE_FIELDS[schedule]
        foreign = [key for key, value in data.items()
                   if key != "schedule" and key in cls.model_fields and value is not None and key not in own]
        if foreign:
            raise ValueError(f"'{foreign[0]}' does not apply to schedule {schedule} "
                             f"(its fields: {', '.join(own)}); remove it or change the schedule")
        filled = dict(data)
        for key, value in SCHEDULE_DEFAULTS[schedule].items():
            if filled.get(key) is None:
                filled[key] = value
        return filled

    @model_validator(mode="after")
    def _complete(self) -> "KLAnnealingConfig":
        if self.schedule == "constant" and self.beta is None:
            raise ValueError("schedule constant needs beta (He et al. sweep 0.2, 0.4, 0.6, 0.8)")
        if self.warmup_steps is not None and self.warmup_epochs is not None:
            raise ValueError("give warmup_steps or warmup_epochs, not both")
        if self.total_steps is not None and self.total_epochs is not None:
            raise ValueError("give total_steps or total_epochs, not both")
        if self.schedule == "cyclical_zero" and self.ratio_zero + self.ratio_increase > 1 + 1e-12:
            raise ValueError(f"ratio_zero + ratio_increase must be <= 1 (got {self.ratio_zero} + "
                             f"{self.ratio_increase})")
        return self


# ---------------------------------------------------------------- the schedules, one function per formula


def linear_beta(t: int, start: float, warmup_steps: int) -> float:
    """He et al. 2019 / Li et al. 2019: β_t = min(1, start + (1 − start) · t / W)."""
    return min(1.0, start + (1.0 - start) * t / warmup_steps)


def sigmoid_beta(t: int, k: float, x0: float) -> float:
    """Bowman et al. 2016 (as commonly re-implemented): β_t = 1 / (1 + exp(−k (t − x0)))."""
    x = -k * (t - x0)
    if x > 700:  # exp overflow: β is 0 to double precision
        return 0.0
    return 1.0 / (1.0 + math.exp(x))


def rise(v: float, shape: str) -> float:
    """Fu et al. 2019 monotone rise on v ∈ [0, 1]: linear v, cosine ½ − ½cos(πv), sigmoid 1/(1 + e^−(12v − 6))."""
    if shape == "linear":
        return v
    if shape == "cosine":
        return 0.5 - 0.5 * math.cos(math.pi * v)
    if shape == "sigmoid":
        return 1.0 / (1.0 + math.exp(-(12.0 * v - 6.0)))
    raise ValueError(f"unknown shape {shape!r}")


def cycle_position(t: int, total_steps: int, n_cycles: int) -> float:
    """Fu et al. 2019 eq. 9 (t counted from 0): τ = (t mod ⌈T/M⌉) / (T/M), in [0, 1)."""
    period = total_steps / n_cycles
    return (t % math.ceil(period)) / period


def cyclical_beta(t: int, total_steps: int, n_cycles: int, ratio: float, shape: str) -> float:
    """Fu et al. 2019: β_t = f(τ/R) for τ ≤ R, else 1 (τ the position in the cycle); β = 1 once t ≥ T."""
    if t >= total_steps:
        return 1.0
    tau = cycle_position(t, total_steps, n_cycles)
    return rise(tau / ratio, shape) if tau <= ratio else 1.0


def cyclical_zero_beta(t: int, total_steps: int, n_cycles: int, ratio_zero: float, ratio_increase: float) -> float:
    """Optimus (Li et al. 2020, frange_cycle_zero_linear): in each cycle β = 0 for τ < r0, then
    β = (τ − r0)/ra for r0 ≤ τ < r0 + ra, then 1 (τ as in Fu et al.); β = 1 once t ≥ T."""
    if t >= total_steps:
        return 1.0
    tau = cycle_position(t, total_steps, n_cycles)
    if tau < ratio_zero:
        return 0.0
    return min(1.0, (tau - ratio_zero) / ratio_increase)


def _steps(steps: int | None, epochs: float | None, default_epochs: float, steps_per_epoch: int) -> int:
    """A step count from a steps field, an epochs field, or the default number of epochs."""
    if steps is not None:
        return steps
    return max(1, round((epochs if epochs is not None else default_epochs) * steps_per_epoch))


@register
class KLAnnealing(Technique):
    """KL annealing: loss = rec + β_t · KL, t = optimiser steps of the current phase; e.g. linear
    β_t = min(1, start + (1 − start)·t/W), cyclical β_t = f(τ/R) for τ ≤ R else 1 (all five in the module docstring)."""

    name = "kl_annealing"
    order = 60  # see Technique.order; multiplies β
    version = 1
    paper = ("Bowman et al. 2016 (sigmoid); He et al. 2019 and Li et al. 2019 (linear, constant β); "
             "Fu et al. 2019 NAACL 'Cyclical Annealing Schedule' (cyclical); Li et al. 2020 Optimus (cyclical_zero)")
    summary = "multiply the KL term by a schedule β_t (constant, linear, sigmoid, cyclical, cyclical_zero)"
    Config = KLAnnealingConfig

    def __init__(self, config: KLAnnealingConfig, context: TrainContext) -> None:
        super().__init__(config, context)
        spe = max(1, context.steps_per_epoch)
        self.warmup_steps = _steps(config.warmup_steps, config.warmup_epochs, DEFAULT_WARMUP_EPOCHS, spe)
        self.total_steps = _steps(config.total_steps, config.total_epochs, DEFAULT_TOTAL_EPOCHS, spe)

    def beta(self, t: int) -> float:
        """β after t optimiser steps of the current phase."""
        c = self.config
        if c.schedule == "constant":
            return float(c.beta)
        if c.schedule == "linear":
            return linear_beta(t, c.start, self.warmup_steps)
        if c.schedule == "sigmoid":
            return sigmoid_beta(t, c.k, c.x0)
        if c.schedule == "cyclical":
            return cyclical_beta(t, self.total_steps, c.n_cycles, c.ratio, c.shape)
        return cyclical_zero_beta(t, self.total_steps, c.n_cycles, c.ratio_zero, c.ratio_increase)

    def kl_weight(self, step: Step) -> float:
        return self.beta(step.phase_step)
