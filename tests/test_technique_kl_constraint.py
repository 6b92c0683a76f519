"""kl_constraint (Prokhorov et al. 2019): C_t ramp values, the value of β·|KL̄ − C_t|, and the gradient sign
around C_t (below it the KL is pushed up, above it down)."""

from __future__ import annotations

import pytest
import torch

from ablate.metrics.estimators import gaussian_kl_per_dim
from ablate.techniques.base import LossParts, Step, TrainContext, compose_loss
from ablate.data.tokenize import SpecialIds
from ablate.techniques.kl_constraint import KLConstraint, target_rate
from ablate.core.technique_registry import resolve_techniques

F64 = torch.float64
SPECIAL = SpecialIds(pad=0, bos=1, eos=2, unk=3, mask=3)


def make(steps_per_epoch: int = 10, **fields) -> KLConstraint:
    resolved = resolve_techniques({"kl_constraint": fields})["kl_constraint"]
    return KLConstraint(KLConstraint.Config.model_validate(resolved),
                        TrainContext(nz=4, steps_per_epoch=steps_per_epoch, special_ids=SPECIAL))


def step(t: int) -> Step:
    return Step(global_step=t + 100, phase_step=t, epoch=0, phase="vae")


def test_ramp_values():
    assert [target_rate(t, 15.0, 10) for t in (0, 1, 5, 10, 11, 1000)] == pytest.approx([0, 1.5, 7.5, 15, 15, 15])
    t = make(C=15, ramp_steps=10)
    assert [t.target(s) for s in (0, 4, 10, 30)] == pytest.approx([0.0, 6.0, 15.0, 15.0])


def test_default_ramp_is_two_epochs():
    assert make(steps_per_epoch=7, C=3).ramp_steps == 14  # Prokhorov et al.: n = 2 epochs of steps
    assert make(steps_per_epoch=10, C=3, ramp_epochs=0.5).ramp_steps == 5


def test_counts_steps_of_the_current_phase():
    t = make(C=10, ramp_steps=10)
    kl = torch.full((2, 4), 1.0, dtype=F64)  # KL̄ = 4
    assert float(t.kl_term(kl, step(5))) == pytest.approx(1.0)  # |4 − 5|, at phase_step 5 (global 105)


def test_value_with_beta_through_compose_loss():
    t = make(C=15, beta=2.0, ramp_steps=10)
    kl = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], dtype=F64)  # KL_i = 3, 3 → KL̄ = 3
    parts = LossParts(rec=torch.tensor([10.0, 30.0], dtype=F64), kl_per_dim=kl, mu=kl, logvar=kl, z=kl)
    objective = compose_loss(parts, [t], 1.0, step(4))  # C_t = 6
    assert objective.beta == 2.0
    assert float(objective.kl_term) == pytest.approx(3.0)
    assert float(objective.loss) == pytest.approx(20.0 + 2.0 * 3.0)
    late = compose_loss(parts, [t], 0.5, step(50))  # C_t = C = 15; base weight 0.5 multiplies β
    assert float(late.loss) == pytest.approx(20.0 + 0.5 * 2.0 * 12.0)


@pytest.mark.parametrize("scale, direction", [(0.5, +1), (3.0, -1)])
def test_gradient_sign_around_the_target(scale, direction):
    """Below C_t one gradient step on (mu, logvar) raises the KL; above C_t it lowers it."""
    gen = torch.Generator().manual_seed(0)
    mu = (scale * torch.randn(8, 4, generator=gen, dtype=F64)).requires_grad_(True)
    logvar = (0.3 * torch.randn(8, 4, generator=gen, dtype=F64)).requires_grad_(True)
    t = make(C=6.0, ramp_steps=10)
    kl_before = gaussian_kl_per_dim(mu, logvar).sum(-1).mean().detach()
    assert (float(kl_before) < 6.0) == (direction > 0)
    term = t.kl_term(gaussian_kl_per_dim(mu, logvar), step(20))
    g_mu, g_lv = torch.autograd.grad(term, [mu, logvar])
    # the term's gradient is ∓ the plain KL̄ gradient
    p_mu, p_lv = torch.autograd.grad(gaussian_kl_per_dim(mu, logvar).sum(-1).mean(), [mu, logvar])
    torch.testing.assert_close(g_mu, -direction * p_mu)
    torch.testing.assert_close(g_lv, -direction * p_lv)
    with torch.no_grad():
        kl_after = gaussian_kl_per_dim(mu - 1e-3 * g_mu, logvar - 1e-3 * g_lv).sum(-1).mean()
    assert (float(kl_after) - float(kl_before)) * direction > 0


def test_gradient_wrt_mean_kl_is_plus_minus_one():
    kl = torch.full((4, 2), 1.0, dtype=F64, requires_grad=True)  # KL̄ = 2
    t = make(C=10, ramp_steps=10)
    (below,) = torch.autograd.grad(t.kl_term(kl, step(5)), [kl])  # C_t = 5 > 2
    (above,) = torch.autograd.grad(t.kl_term(kl, step(1)), [kl])  # C_t = 1 < 2
    torch.testing.assert_close(below, torch.full_like(kl, -1 / 4))
    torch.testing.assert_close(above, torch.full_like(kl, 1 / 4))


@pytest.mark.parametrize("fields, fragment", [
    ({}, "C"),
    ({"C": 15, "ramp_steps": 10, "ramp_epochs": 2}, "not both"),
    ({"C": -1}, "C"),
    ({"C": 15, "beta": 0}, "beta"),
])
def test_config_errors(fields, fragment):
    with pytest.raises(ValueError, match="techniques.kl_constraint") as info:
        resolve_techniques({"kl_constraint": fields})
    assert fragment in str(info.value)
