"""bn_vae (Zhu et al. 2020): the batch KL bound on random batches (and its closed form at logvar = 0), evaluation
with the running statistics, γ never trainable, the module saved with the model, and the bound during training."""

from __future__ import annotations

import math

import pytest
import torch

from ablate.core.config_reading import build_config
from ablate.metrics.estimators import gaussian_kl
from ablate.techniques.bn_vae import BatchNormMean
from conftest import tiny_overrides


@pytest.mark.parametrize("seed", range(5))
def test_batch_kl_is_at_least_half_nz_gamma_squared(seed):
    gen = torch.Generator().manual_seed(seed)
    nz, gamma = 16, 0.5
    module = BatchNormMean(nz, gamma).double().train()
    with torch.no_grad():
        module.shift.normal_(0.0, 0.3, generator=gen)
    mu = torch.randn(32, nz, generator=gen, dtype=torch.float64) * torch.rand(nz, generator=gen, dtype=torch.float64) * 3
    logvar = torch.randn(32, nz, generator=gen, dtype=torch.float64)
    normed, _ = module(mu, logvar)
    var = mu.var(0, unbiased=False)
    bound = 0.5 * float((gamma ** 2 * var / (var + module.eps) + module.shift.detach().double() ** 2).sum())
    assert float(gaussian_kl(normed, logvar).mean().detach()) >= bound - 1e-9
    assert bound >= 0.5 * nz * gamma ** 2 * 0.999


def test_closed_form_at_unit_variance():
    """logvar = 0, shift 0: E_batch[KL] = ½ Σ_j mean_i μ̂_ij² = ½ · γ² · Σ_j v_j / (v_j + ε) exactly."""
    gen = torch.Generator().manual_seed(0)
    module = BatchNormMean(4, 0.7).double().train()
    mu = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    normed, _ = module(mu, torch.zeros_like(mu))
    var = mu.var(0, unbiased=False)
    expected = 0.5 * 0.49 * float((var / (var + 1e-5)).sum())
    assert math.isclose(float(gaussian_kl(normed, torch.zeros_like(mu)).mean().detach()), expected, rel_tol=1e-6)


def test_evaluation_uses_running_statistics():
    gen = torch.Generator().manual_seed(1)
    module = BatchNormMean(3, 0.5).train()
    for _ in range(5):
        module(torch.randn(8, 3, generator=gen) * 2 + 1, torch.zeros(8, 3))
    module.eval()
    mu = torch.randn(4, 3, generator=gen)
    by_hand = 0.5 * (mu - module.running_mean) / torch.sqrt(module.running_var + 1e-5) + module.shift
    out, _ = module(mu, torch.zeros_like(mu))
    assert torch.allclose(out, by_hand, atol=1e-6)
    alone, _ = module(mu[:1], torch.zeros(1, 3))
    assert torch.allclose(alone, out[:1])  # one sentence scores as it does in a batch
    assert not torch.allclose(module.running_mean, torch.zeros(3))


def test_gamma_is_a_buffer_and_the_shift_an_encoder_parameter():
    from ablate.engine.run import build, prepare

    config = build_config(tiny_overrides(techniques={"bn_vae": {"gamma": 0.6}}), "<test>")
    model = build(config, prepare(config))
    names = {n for n, _ in model.named_parameters()}
    assert "posterior_transforms.0.shift" in names and not any(n.endswith("gamma") for n in names)
    assert torch.equal(model.state_dict()["posterior_transforms.0.gamma"], torch.full((4,), 0.6))
    assert any(p is model.posterior_transforms[0].shift for p in model.encoder_parameters())
    assert not any(p is model.posterior_transforms[0].shift for p in model.decoder_parameters())


def test_training_keeps_the_batch_kl_above_the_bound_and_the_model_reloads(tmp_path, one_torch_thread):
    from ablate.engine.run import execute
    from ablate.engine.saved_models import load_run

    gamma, nz = 0.5, 4
    # init U(±1): this tiny encoder's μ then varies with Var ≈ 1e-2 ≫ ε across sentences. At U(±0.1) the variance
    # is ~3e-7 < ε = 1e-5 and the bound starts near 0 (module docstring)
    config = build_config(tiny_overrides(**{"techniques": {"bn_vae": {"gamma": gamma}}, "train.epochs": 2,
                                            "model.init_uniform": 1.0}), "<test>")
    outcome = execute(config, tmp_path, progress=False)
    assert outcome.ok, outcome.row.get("error_message")
    train_kl = [c["kl"] for c in outcome.curves if c["split"] == "train"]
    assert min(train_kl) >= 0.5 * nz * gamma ** 2 * 0.99  # every batch of ≥ 2 sentences
    _, _, model = load_run(outcome.model_path)
    assert torch.equal(model.state_dict()["posterior_transforms.0.running_var"],
                       torch.load(outcome.model_path, weights_only=False)["model"]["posterior_transforms.0.running_var"])


def test_the_seq2seq_model_normalises_its_posterior_mean_too():
    """BN-VAE on the T5 VAE: encode applies the batch norm (batch statistics in training: the second moment of each
    dimension is γ²·v/(v+ε) + b², v the batch variance of the raw mean), and the shift is an encoder parameter."""
    from ablate.data.synthetic import generate_synthetic
    from ablate.models.transformer_parts import masked_pool
    from test_seq2seq import batch_of, tiny_model

    sentences = generate_synthetic(n_train=400, n_valid=10, n_test=10, seed=3).texts["train"]
    model, tokenizer = tiny_model("t5", sentences)  # eval mode: no dropout in the encoder
    model.add_posterior_transform(BatchNormMean(model.nz, 0.5))
    model.posterior_transforms.train()  # the batch norm alone in training mode
    batch = batch_of(tokenizer, sentences[:16])
    with torch.no_grad():
        mu, _ = model.encode(batch)
        hidden = model.net.get_encoder()(input_ids=batch.enc_ids, attention_mask=batch.enc_mask).last_hidden_state
        raw_mu = model.to_posterior(masked_pool(hidden, batch.enc_mask, model.pooling)).chunk(2, -1)[0]
    raw_var = raw_mu.var(0, unbiased=False)
    assert torch.allclose(mu.square().mean(0), 0.25 * raw_var / (raw_var + 1e-5), rtol=1e-3, atol=1e-6)
    assert any(p is model.posterior_transforms[0].shift for p in model.encoder_parameters())
