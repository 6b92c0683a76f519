"""Standard errors (ablate.metrics.uncertainty) against brute-force computations: the mean's SE, the delta method against
a large explicit bootstrap of the perplexity, and the MI / AU bootstrap against recomputing each resample."""

from __future__ import annotations

import math

import torch

from ablate.metrics.estimators import LOG_2PI, _log_aggregate_density, mutual_information, paired_draws
from ablate.metrics.uncertainty import (bootstrap_au, bootstrap_indices, bootstrap_mi, exp_ratio_se, log_weighted_sums,
                                       mean_se)


def _posteriors(n: int = 60, nz: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, nz, generator=g).double(), (0.3 * torch.randn(n, nz, generator=g) - 1).double()


def test_mean_se_is_the_sample_sd_over_root_n():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0])
    mean = sum(x.tolist()) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in x.tolist()) / 3)
    assert abs(mean_se(x) - sd / 2) < 1e-12 and math.isnan(mean_se(torch.tensor([1.0])))


def test_the_delta_method_agrees_with_an_explicit_bootstrap_of_the_perplexity():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(5, 40, (400,), generator=g).double()
    nll = tokens * 4.6 + torch.randn(400, generator=g).double() * 8  # ≈ PPL 100, noisy per sentence
    idx = bootstrap_indices(400, 4000, torch.Generator().manual_seed(2))
    ppl = torch.exp(nll[idx].sum(1) / tokens[idx].sum(1))
    assert abs(exp_ratio_se(nll, tokens) / float(ppl.std()) - 1) < 0.1


def test_the_mi_bootstrap_recomputes_each_resample_of_he_et_al_s_estimate():
    mu, logvar = _posteriors()
    n, nz = mu.shape
    z = mu + (0.5 * logvar).exp() * torch.randn(n, nz, generator=torch.Generator().manual_seed(3)).double()
    neg_entropy = (-0.5 * nz * LOG_2PI - 0.5 * (1 + logvar).sum(-1)).unsqueeze(1)  # He et al.'s analytic term
    fast = bootstrap_mi(mu, logvar, z.unsqueeze(1), neg_entropy, 5, torch.Generator().manual_seed(4))
    for b, idx in enumerate(bootstrap_indices(n, 5, torch.Generator().manual_seed(4))):
        explicit, _ = mutual_information(mu[idx], logvar[idx], z=z[idx])
        assert abs(float(fast[b]) - explicit) < 1e-4


def test_the_mi_bootstrap_recomputes_each_resample_of_the_paired_estimate():
    mu, logvar = _posteriors()
    n, nz = mu.shape
    z, own = paired_draws(mu, logvar, 3, torch.Generator().manual_seed(5))
    fast = bootstrap_mi(mu, logvar, z, own, 4, torch.Generator().manual_seed(6))
    for b, idx in enumerate(bootstrap_indices(n, 4, torch.Generator().manual_seed(6))):
        log_agg = _log_aggregate_density(z[idx].reshape(-1, nz), mu[idx], logvar[idx], 1024)
        explicit = float((own[idx].reshape(-1) - log_agg).mean())
        assert abs(float(fast[b]) - explicit) < 1e-4


def test_weighted_log_sums_are_exact_when_the_drawn_terms_underflow():
    """Rows whose largest terms a resample did not draw: scaled by the row maximum, every drawn term underflows
    (e^-1000), so those pairs are summed again; checked against logsumexp over the drawn terms, pair by pair."""
    dens = torch.tensor([[0.0, -1000.0, -1003.0, -2.0], [5.0, -800.0, -900.0, -700.0], [-1.0, -1.5, -2.0, -2.5]],
                        dtype=torch.float64)
    counts = torch.tensor([[0, 2, 0], [1, 0, 1], [2, 0, 0], [0, 1, 1]], dtype=torch.float64)  # [sentences, resamples]
    fast = log_weighted_sums(dens, counts)
    for i in range(3):
        for b in range(3):
            expected = float(torch.logsumexp(dens[i] + counts[:, b].log(), 0))
            assert abs(float(fast[i, b]) - expected) < 1e-9 * max(1.0, abs(expected))
    assert fast[1, 2] < -690  # only e^-700 and smaller were drawn there: the product alone would say −690 (1e-300)
    partly = log_weighted_sums(dens, counts, needed=torch.zeros(3, 3, dtype=torch.bool))
    assert torch.isfinite(partly).all() and torch.equal(partly[2], fast[2])


def test_block_pools_are_resampled_whole():
    mu, logvar = _posteriors(n=10)
    z = mu.unsqueeze(1)  # any draws will do: the per-block estimates are what is resampled
    own = torch.zeros(10, 1, dtype=torch.float64)
    sizes = [3, 3, 4]
    fast = bootstrap_mi(mu, logvar, z, own, 6, torch.Generator().manual_seed(7), block_sizes=sizes)
    starts = [0, 3, 6]
    per_block = [float((-_log_aggregate_density(z[a:a + k, 0], mu[a:a + k], logvar[a:a + k], 1024)).sum())
                 for a, k in zip(starts, sizes)]
    for b, picks in enumerate(bootstrap_indices(3, 6, torch.Generator().manual_seed(7))):
        expected = sum(per_block[p] for p in picks.tolist()) / sum(sizes[p] for p in picks.tolist())
        assert abs(float(fast[b]) - expected) < 1e-9


def test_the_au_bootstrap_counts_active_units_of_each_resample():
    mu = torch.cat([torch.randn(50, 2, generator=torch.Generator().manual_seed(8)), 1e-3 * torch.ones(50, 1)], 1)
    idx = bootstrap_indices(50, 3, torch.Generator().manual_seed(9))
    assert bootstrap_au(mu, idx, 0.01).tolist() == [float((mu[i].var(0) >= 0.01).sum()) for i in idx]
