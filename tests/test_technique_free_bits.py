"""free_bits: values against hand-worked numbers; for every mode the gradient w.r.t. mu/logvar is zero below the
threshold and equal to the plain KL gradient above it; the reported KL stays the plain KL."""

from __future__ import annotations

import pytest
import torch

from ablate.metrics.estimators import gaussian_kl_per_dim
from ablate.techniques.base import LossParts, Step, TrainContext, compose_loss
from ablate.data.tokenize import SpecialIds
from ablate.techniques.free_bits import FreeBits, free_bits_term
from ablate.core.technique_registry import resolve_techniques

F64 = torch.float64
SPECIAL = SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=3)
STEP = Step(global_step=0, phase_step=0, epoch=0, phase="vae")
MODES = ["per_dim_batch", "per_dim_example", "total_example", "total_batch"]

# logvar = 0 so KL_ij = mu_ij² / 2:  [[2, 0.125, 0.5], [0, 1.125, 0.02]]
MU = [[2.0, 0.5, 1.0], [0.0, 1.5, 0.2]]


def hand_kl() -> torch.Tensor:
    mu = torch.tensor(MU, dtype=F64)
    return gaussian_kl_per_dim(mu, torch.zeros_like(mu))


def make(nz: int = 3, **fields) -> FreeBits:
    resolved = resolve_techniques({"free_bits": fields})["free_bits"]
    return FreeBits(FreeBits.Config.model_validate(resolved), TrainContext(nz=nz, steps_per_epoch=10,
                                                                           special_ids=SPECIAL))


def test_hand_kl_values():
    torch.testing.assert_close(hand_kl(), torch.tensor([[2.0, 0.125, 0.5], [0.0, 1.125, 0.02]], dtype=F64))


@pytest.mark.parametrize("mode, lam, expected", [
    # Σ_j max(λ, mean_i KL_ij): dimension means [1.0, 0.625, 0.26] → 1.0 + 0.625 + 0.5
    ("per_dim_batch", 0.5, 2.125),
    # mean_i Σ_j max(λ, KL_ij): rows (2 + 0.5 + 0.5) and (0.5 + 1.125 + 0.5)
    ("per_dim_example", 0.5, (3.0 + 2.125) / 2),
    # mean_i max(nz·λ, KL_i): totals 2.625 and 1.145 against 1.5
    ("total_example", 0.5, (2.625 + 1.5) / 2),
    # max(nz·λ, mean_i KL_i): mean 1.885 against 1.5, then against 2.1
    ("total_batch", 0.5, 1.885),
    ("total_batch", 0.7, 2.1),
    # a zero threshold is the plain KL
    ("per_dim_example", 0.0, 1.885),
])
def test_values_hand_worked(mode, lam, expected):
    assert float(free_bits_term(hand_kl(), mode, lam)) == pytest.approx(expected)
    assert float(make(mode=mode, lambda_per_dim=lam).kl_term(hand_kl(), STEP)) == pytest.approx(expected)


def _active_mask(kl: torch.Tensor, mode: str, lam: float) -> torch.Tensor:
    """Where the plain KL gradient must survive: the pieces above the threshold, broadcast to [B, nz]."""
    nz = kl.shape[1]
    if mode == "per_dim_batch":
        return (kl.mean(0, keepdim=True) > lam).expand_as(kl)
    if mode == "per_dim_example":
        return kl > lam
    if mode == "total_example":
        return (kl.sum(1, keepdim=True) > lam * nz).expand_as(kl)
    return (kl.sum(1).mean() > lam * nz).expand_as(kl)


def _grads(term_fn, mu, logvar):
    mu = mu.clone().requires_grad_(True)
    logvar = logvar.clone().requires_grad_(True)
    term = term_fn(gaussian_kl_per_dim(mu, logvar))
    g_mu, g_lv = torch.autograd.grad(term, [mu, logvar])
    return g_mu, g_lv


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lam", [0.05, 0.3, 0.6, 2.0])
def test_gradient_zero_below_threshold_plain_above(mode, lam):
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(6, 5, generator=gen, dtype=F64)
    logvar = 0.8 * torch.randn(6, 5, generator=gen, dtype=F64)
    kl = gaussian_kl_per_dim(mu, logvar)
    # keep the pieces away from the threshold, where max() has no derivative
    pieces = {"per_dim_batch": kl.mean(0), "per_dim_example": kl, "total_example": kl.sum(1) / 5,
              "total_batch": kl.sum(1).mean() / 5}[mode]
    assert (pieces - lam).abs().min() > 1e-3
    active = _active_mask(kl, mode, lam)
    g_mu, g_lv = _grads(lambda k: free_bits_term(k, mode, lam), mu, logvar)
    p_mu, p_lv = _grads(lambda k: k.sum(-1).mean(), mu, logvar)  # the plain KL term, mean_i KL_i
    torch.testing.assert_close(g_mu, torch.where(active, p_mu, torch.zeros_like(p_mu)), rtol=0, atol=1e-12)
    torch.testing.assert_close(g_lv, torch.where(active, p_lv, torch.zeros_like(p_lv)), rtol=0, atol=1e-12)


def test_each_mode_sees_both_sides_in_the_gradient_test():
    """The random batch above exercises gradients that are partly zero, partly plain (not all one or the other)."""
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(6, 5, generator=gen, dtype=F64)
    logvar = 0.8 * torch.randn(6, 5, generator=gen, dtype=F64)
    kl = gaussian_kl_per_dim(mu, logvar)
    for mode in ["per_dim_batch", "per_dim_example", "total_example"]:
        active = _active_mask(kl, mode, 0.6)
        assert active.any() and not active.all(), mode
    assert _active_mask(kl, "total_batch", 0.05).all() and not _active_mask(kl, "total_batch", 2.0).any()


def test_hand_gradients_per_dim_example():
    """d/dmu of max(λ, mu²/2) is mu above λ and 0 below; divided by B = 2 for the batch mean."""
    g_mu, _ = _grads(lambda k: free_bits_term(k, "per_dim_example", 0.3), torch.tensor(MU, dtype=F64),
                     torch.zeros(2, 3, dtype=F64))
    torch.testing.assert_close(g_mu, torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.75, 0.0]], dtype=F64))


def test_target_total_is_converted_with_nz():
    assert make(nz=32, target_total=8).lambda_per_dim == pytest.approx(0.25)  # Li et al.
    assert make(nz=16, lambda_per_dim=0.5).lambda_per_dim == 0.5


@pytest.mark.parametrize("fields, fragment", [
    ({}, "exactly one of lambda_per_dim"),
    ({"lambda_per_dim": 0.5, "target_total": 8}, "exactly one of lambda_per_dim"),
    ({"mode": "per_dim", "lambda_per_dim": 0.5}, "mode"),
    ({"lambda_per_dim": -1}, "lambda_per_dim"),
])
def test_config_errors(fields, fragment):
    with pytest.raises(ValueError, match="techniques.free_bits") as info:
        resolve_techniques({"free_bits": fields})
    assert fragment in str(info.value)


def test_replaces_the_kl_term_but_reported_kl_stays_plain():
    kl = hand_kl()
    rec = torch.tensor([10.0, 20.0], dtype=F64)
    parts = LossParts(rec=rec, kl_per_dim=kl, mu=torch.zeros(2, 3), logvar=torch.zeros(2, 3), z=torch.zeros(2, 3))
    objective = compose_loss(parts, [make(mode="per_dim_example", lambda_per_dim=0.5)], 1.0, STEP)
    assert float(objective.loss) == pytest.approx(15.0 + 2.5625)
    assert float(objective.kl_term) == pytest.approx(2.5625)
    assert float(parts.kl.mean()) == pytest.approx(1.885)  # what train.py logs as kl: the plain KL
