"""BN-VAE (Zhu et al. 2020, "A Batch Normalized Inference Network Keeps the KL Vanishing Away", ACL): batch
normalisation of the posterior mean with a fixed scale γ and a learned shift,

    μ̂_ij = γ · (μ_ij − m_j) / √(v_j + ε) + b_j,    m_j, v_j the batch mean and (biased) variance of dimension j,

so the batch's second moment of μ̂_j is γ²·v_j/(v_j + ε) + b_j², and since KL_ij ≥ μ̂_ij² / 2 (σ² − log σ² − 1 ≥ 0):

    E_batch[KL] = Σ_j (1/B) Σ_i KL_ij  ≥  ½ Σ_j (γ² v_j/(v_j + ε) + b_j²)  ≈  ½ · nz · γ²   (v_j ≫ ε).

The KL can never vanish, whatever the decoder — once the encoder's μ varies across sentences by more than √ε:
a small encoder at init U(±0.1) gave v_j ≈ 3e-7 ≪ ε (bound ≈ 0.03 of its nominal value), at U(±1) v_j ≈ 1e-2.
As in the authors' code (valdersoul/bn-vae, `modules/encoders/enc_lstm.py`: `nn.BatchNorm1d(nz)` with its weight
filled with γ and frozen), the shift starts at 0, ε = 1e-5, momentum 0.1, and evaluation uses the running
statistics. The scale is a buffer here, not a frozen parameter, so no phase that unfreezes the encoder can make
it trainable. The module belongs to the model (saved with it, an encoder parameter); a training batch of one
sentence, which has no batch variance, uses the running statistics. Reported KL is the KL of the normalised
posterior.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from ablate.techniques.base import Technique, TechniqueConfig
from ablate.core.technique_registry import register


class BNVAEConfig(TechniqueConfig):
    gamma: float = Field(0.5, gt=0, description="fixed BN scale γ: E_batch[KL] ≥ ½·nz·γ² (Zhu et al.: 0.5 to 1.0; "
                                                "their Yahoo/Yelp example 0.5)")


class BatchNormMean(nn.Module):
    """μ̂ = γ · BN(μ) + b with γ fixed (a buffer) and b learned; logvar unchanged (Zhu et al. 2020)."""

    def __init__(self, nz: int, gamma: float, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.shift = nn.Parameter(torch.zeros(nz))
        self.register_buffer("gamma", torch.full((nz,), float(gamma)))
        self.register_buffer("running_mean", torch.zeros(nz))
        self.register_buffer("running_var", torch.ones(nz))

    def forward(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        batch_stats = self.training and mu.shape[0] > 1
        normed = F.batch_norm(mu.to(self.running_mean.dtype), self.running_mean, self.running_var, self.gamma,
                              self.shift, batch_stats, self.momentum, self.eps)
        return normed.to(mu.dtype), logvar


@register
class BNVAE(Technique):
    """Zhu et al. 2020: μ̂ = γ·BN(μ) + b, γ fixed, so E_batch[KL] ≥ ½·nz·γ² (module docstring)."""

    name = "bn_vae"
    order = 20  # see Technique.order; a module after the encoder
    version = 1
    paper = "Zhu et al. 2020 'A Batch Normalized Inference Network Keeps the KL Vanishing Away' (ACL)"
    summary = "batch-norm the posterior mean with a fixed scale γ: the batch KL stays ≥ ½·nz·γ²"
    Config = BNVAEConfig

    @classmethod
    def posterior_transform(cls, config: BNVAEConfig, nz: int) -> nn.Module:
        return BatchNormMean(nz, config.gamma)
