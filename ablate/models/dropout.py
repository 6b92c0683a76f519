"""Dropout with its mask drawn as `rand_like(x) >= p`: the same distribution as nn.Dropout, fewer cycles on CPUs.

nn.Dropout draws its mask with `bernoulli_`, which on the 2-core AMD EPYC took 2.4–3.0 ms for a [32, 25, 288]
activation where `rand_like(x) >= p` took 0.6–1.5 ms (the last round measured 2.5× on the same shapes). Values
differ from nn.Dropout's for the same seed (another random stream), not in distribution: each unit is kept with
probability 1 − p and scaled by 1 / (1 − p) (Srivastava et al. 2014, inverted dropout).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskDropout(nn.Dropout):
    """nn.Dropout (same arguments, same state dict: none) drawing its mask from a uniform comparison."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x.mul_(keep) if self.inplace else x * keep


def cheaper_dropout(module: nn.Module) -> int:
    """Replace every nn.Dropout inside `module` (a transformers model's too) by MaskDropout; how many were."""
    replaced = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, MaskDropout(child.p, child.inplace))
                replaced += 1
    return replaced
