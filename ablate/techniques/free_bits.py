"""Free bits / KL thresholding: the KL term is replaced by a thresholded one, so that KL below the threshold is not
penalised (its gradient is zero) and KL above it is penalised as usual.

With KL_ij the analytic KL of example i, dimension j (batch of B), λ the threshold per dimension and Λ = nz · λ
the threshold of the whole vector, the four definitions in the literature are the modes:

- per_dim_batch     Σ_j max(λ, (1/B) Σ_i KL_ij)            Kingma et al. 2016 (IAF), "free bits"
- per_dim_example   (1/B) Σ_i Σ_j max(λ, KL_ij)            Li et al. 2019 fb=2 (λ = target/nz), Optimus, Lee & Park
- total_example     (1/B) Σ_i max(Λ, Σ_j KL_ij)            Li et al. 2019 fb=1
- total_batch       max(Λ, (1/B) Σ_i Σ_j KL_ij)            Li et al. 2019 fb=3

Li et al.'s code masks the KL below the threshold (the term becomes 0 there) where Kingma et al. clamp it at the
threshold: the gradients are the same; we clamp, so the term is continuous in the KL. The threshold is given per
dimension (`lambda_per_dim`) or as a total target (`target_total`, Li et al.: 8 nats = 0.25 per dimension at
nz = 32); exactly one of them. The reported KL (curves, metrics) stays the plain KL.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ablate.techniques.base import Step, Technique, TechniqueConfig, TrainContext
from ablate.core.technique_registry import register

Mode = Literal["per_dim_batch", "per_dim_example", "total_example", "total_batch"]


class FreeBitsConfig(TechniqueConfig):
    mode: Mode = Field("per_dim_example", description="per_dim_batch (Kingma 2016) | per_dim_example (Li fb=2, "
                                                      "Optimus, Lee & Park) | total_example (Li fb=1) | "
                                                      "total_batch (Li fb=3)")
    lambda_per_dim: float | None = Field(None, ge=0, description="threshold λ in nats per latent dimension "
                                                                 "(Optimus 0.05–1, Lee & Park 0.5/3/6); or target_total")
    target_total: float | None = Field(None, ge=0, description="threshold in nats for the whole z (Li et al.: 8); "
                                                               "λ = target_total / nz; or lambda_per_dim")

    @model_validator(mode="after")
    def _one_threshold(self) -> "FreeBitsConfig":
        if (self.lambda_per_dim is None) == (self.target_total is None):
            raise ValueError("give exactly one of lambda_per_dim (nats per dimension) or target_total "
                             "(nats for the whole latent vector, = lambda_per_dim · nz)")
        return self


def free_bits_term(kl_per_dim: Tensor, mode: str, lambda_per_dim: float) -> Tensor:
    """The thresholded KL term (a scalar) of a batch, kl_per_dim [B, nz]; formulas in the module docstring."""
    lam = kl_per_dim.new_tensor(lambda_per_dim)
    if mode == "per_dim_batch":
        return torch.maximum(lam, kl_per_dim.mean(0)).sum()
    if mode == "per_dim_example":
        return torch.maximum(lam, kl_per_dim).sum(-1).mean()
    total = lam * kl_per_dim.shape[-1]
    if mode == "total_example":
        return torch.maximum(total, kl_per_dim.sum(-1)).mean()
    if mode == "total_batch":
        return torch.maximum(total, kl_per_dim.sum(-1).mean())
    raise ValueError(f"unknown free-bits mode {mode!r}")


@register
class FreeBits(Technique):
    """Free bits: KLterm = thresholded KL, e.g. per_dim_example (1/B) Σ_i Σ_j max(λ, KL_ij) (all four modes in the
    module docstring); the plain KL is still what is reported."""

    name = "free_bits"
    order = 50  # see Technique.order; replaces the KL term
    version = 1
    paper = ("Kingma et al. 2016 'Improved Variational Inference with Inverse Autoregressive Flow' (per_dim_batch); "
             "Li et al. 2019 'A Surprisingly Effective Fix for Deep Latent Variable Modeling of Text' (fb=1,2,3); "
             "Li et al. 2020 Optimus; Lee & Park 2021")
    summary = "KL thresholding: no penalty on KL below λ per dimension (or a total target), four named modes"
    Config = FreeBitsConfig
    replaces_kl_term = True

    def __init__(self, config: FreeBitsConfig, context: TrainContext) -> None:
        super().__init__(config, context)
        self.lambda_per_dim = (config.lambda_per_dim if config.lambda_per_dim is not None
                               else config.target_total / context.nz)

    def kl_term(self, kl_per_dim: Tensor, step: Step) -> Tensor:
        return free_bits_term(kl_per_dim, self.config.mode, self.lambda_per_dim)
