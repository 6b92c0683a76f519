"""Tests for ablate.metrics.estimators against independent computations (closed forms, torch.distributions, brute force)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ablate.metrics.estimators import (
    LOG_2PI,
    active_units,
    gaussian_kl,
    gaussian_kl_per_dim,
    iw_log_marginal,
    linear_probe_accuracy,
    log_normal_diag,
    log_standard_normal,
    majority_baseline,
    mutual_information,
    perplexity,
    sample_posterior,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# KL and Gaussian densities
# ---------------------------------------------------------------------------------------------------------------


def test_log_2pi_constant() -> None:
    assert LOG_2PI == pytest.approx(math.log(2 * math.pi), abs=1e-15)


def test_gaussian_kl_zero_at_prior() -> None:
    mu = torch.zeros(4, 7)
    logvar = torch.zeros(4, 7)
    assert torch.equal(gaussian_kl_per_dim(mu, logvar), torch.zeros(4, 7))
    assert torch.equal(gaussian_kl(mu, logvar), torch.zeros(4))


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = _gen(0)
    mu = torch.randn(3, 5, 8, generator=g, dtype=F64) * 2
    logvar = torch.randn(3, 5, 8, generator=g, dtype=F64) * 1.5
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = kl_divergence(q, p)
    per_dim = gaussian_kl_per_dim(mu, logvar)
    assert per_dim.shape == (3, 5, 8)
    torch.testing.assert_close(per_dim, ref, rtol=1e-12, atol=1e-12)
    total = gaussian_kl(mu, logvar)
    assert total.shape == (3, 5)
    torch.testing.assert_close(total, ref.sum(-1), rtol=1e-12, atol=1e-12)
    assert bool((per_dim >= 0).all())


def test_gaussian_kl_keeps_dtype_and_gradient() -> None:
    mu = torch.randn(6, 4, generator=_gen(1)).requires_grad_(True)
    logvar = (0.3 * torch.randn(6, 4, generator=_gen(2))).requires_grad_(True)
    kl = gaussian_kl(mu, logvar)
    assert kl.dtype == torch.float32
    kl.sum().backward()
    # d/dmu = mu, d/dlogvar = (exp(logvar) - 1) / 2
    torch.testing.assert_close(mu.grad, mu.detach())
    torch.testing.assert_close(logvar.grad, 0.5 * torch.expm1(logvar.detach()))


def test_gaussian_kl_accurate_near_prior() -> None:
    logvar = torch.tensor([1e-6], dtype=torch.float32)
    kl = gaussian_kl(torch.zeros(1), logvar)
    # KL ~ logvar^2 / 4 for small logvar; naive float32 exp(lv) - lv - 1 would give 0 or garbage.
    assert kl.item() == pytest.approx(0.25e-12, rel=1e-3)


def test_gaussian_kl_matches_monte_carlo() -> None:
    g = _gen(3)
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    logvar = torch.tensor([[-0.5, 0.7, -2.0]], dtype=F64)
    z = sample_posterior(mu, logvar, k=400_000, generator=g)  # [1, S, 3]
    log_ratio = log_normal_diag(z, mu.unsqueeze(1), logvar.unsqueeze(1)) - log_standard_normal(z)
    mc = log_ratio.mean().item()
    se = log_ratio.std().item() / math.sqrt(log_ratio.numel())
    exact = gaussian_kl(mu, logvar).item()
    assert abs(mc - exact) < 4 * se


def test_log_normal_diag_matches_torch_distributions() -> None:
    g = _gen(4)
    z = torch.randn(5, 6, generator=g, dtype=F64)
    mu = torch.randn(5, 6, generator=g, dtype=F64)
    logvar = torch.randn(5, 6, generator=g, dtype=F64)
    ref = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), ref, rtol=1e-12, atol=1e-12)


def test_log_normal_diag_broadcast_shape() -> None:
    g = _gen(5)
    b, k, nz = 4, 9, 3
    z = torch.randn(b, k, nz, generator=g, dtype=F64)
    mu = torch.randn(b, 1, nz, generator=g, dtype=F64)
    logvar = torch.randn(b, 1, nz, generator=g, dtype=F64)
    out = log_normal_diag(z, mu, logvar)
    assert out.shape == (b, k)
    ref = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_log_standard_normal_matches_torch_distributions() -> None:
    z = torch.randn(3, 7, 5, generator=_gen(6), dtype=F64)
    ref = Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(log_standard_normal(z), ref, rtol=1e-12, atol=1e-12)


def test_sample_posterior_shapes_and_moments() -> None:
    mu = torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=F64)
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]], dtype=F64)
    assert sample_posterior(mu, logvar, generator=_gen(7)).shape == (2, 2)
    z = sample_posterior(mu, logvar, k=200_000, generator=_gen(7))
    assert z.shape == (2, 200_000, 2)
    torch.testing.assert_close(z.mean(1), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(1), logvar.exp(), atol=0.0, rtol=0.02)
    # same generator state -> same samples
    z2 = sample_posterior(mu, logvar, k=200_000, generator=_gen(7))
    assert torch.equal(z, z2)


def test_sample_posterior_is_reparameterised() -> None:
    mu = torch.zeros(3, 2, requires_grad=True)
    logvar = torch.zeros(3, 2, requires_grad=True)
    z = sample_posterior(mu, logvar, k=4, generator=_gen(8))
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.full((3, 2), 4.0))
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# Importance-weighted log marginal on a linear-Gaussian model with closed-form log p(x)
# ---------------------------------------------------------------------------------------------------------------

# z ~ N(0, 1), x | z ~ N(A z, S^2) per dimension  =>  p(x) = N(0, A^2 + S^2),
# exact posterior N(A x / (A^2 + S^2), S^2 / (A^2 + S^2)).
A, S = 1.5, 0.8


def _toy_log_px(x: torch.Tensor) -> float:
    var_x = A * A + S * S
    return sum(-0.5 * math.log(2 * math.pi * var_x) - xi * xi / (2 * var_x) for xi in x.tolist())


def _toy_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var_x = A * A + S * S
    return A * x / var_x, torch.full_like(x, S * S / var_x)


def _toy_elbo(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> float:
    """Closed-form ELBO for q = N(m, v) per dimension."""
    total = 0.0
    for xi, mi, vi in zip(x.tolist(), m.tolist(), v.tolist()):
        e_log_lik = -0.5 * math.log(2 * math.pi * S * S) - ((xi - A * mi) ** 2 + A * A * vi) / (2 * S * S)
        e_log_prior = -0.5 * math.log(2 * math.pi) - (mi * mi + vi) / 2
        entropy = 0.5 * math.log(2 * math.pi * math.e * vi)
        total += e_log_lik + e_log_prior + entropy
    return total


def _toy_log_weights(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor, reps: int, k: int, seed: int):
    """Returns (log p(x|z), log p(z), log q(z|x)), each [reps, k], for z ~ N(m, v)."""
    mu = m.expand(reps, -1)
    logvar = v.log().expand(reps, -1)
    z = sample_posterior(mu, logvar, k=k, generator=_gen(seed))  # [reps, k, D]
    log_lik = Normal(A * z, S).log_prob(x).sum(-1)
    log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_q = Normal(mu.unsqueeze(1), torch.exp(0.5 * logvar).unsqueeze(1)).log_prob(z).sum(-1)
    return log_lik, log_prior, log_q


def _iw_means_by_k(ks: list[int]) -> tuple[float, float, dict[int, tuple[float, float]]]:
    """IW estimates with an imperfect q (shifted mean, too narrow but finite weight variance).

    One pool of reps * max(ks) log-weights is split into disjoint groups of K, giving the mean and standard error
    of log p_hat_K for each K. Returns (log p(x), closed-form ELBO, {K: (mean, se)}).
    """
    x = torch.tensor([0.9], dtype=F64)
    post_m, post_v = _toy_posterior(x)
    m, v = post_m + 0.5, post_v * 0.7
    kmax, reps = max(ks), 2000
    lpx_z, lpz, lqz = _toy_log_weights(x, m, v, reps, kmax, seed=11)
    out = {}
    for k in ks:
        est = iw_log_marginal(lpx_z.reshape(-1, k), lpz.reshape(-1, k), lqz.reshape(-1, k))
        out[k] = (est.mean().item(), est.std().item() / math.sqrt(est.numel()))
    return _toy_log_px(x), _toy_elbo(x, m, v), out


@pytest.fixture(scope="module")
def iw_results():
    return _iw_means_by_k([1, 10, 100, 1000])


def test_iw_k1_equals_elbo(iw_results) -> None:
    _, elbo, res = iw_results
    mean, se = res[1]
    assert abs(mean - elbo) < 4 * se


def test_iw_nondecreasing_in_k(iw_results) -> None:
    _, _, res = iw_results
    ks = [1, 10, 100, 1000]
    for k_small, k_big in zip(ks, ks[1:]):
        (m_small, se_small), (m_big, se_big) = res[k_small], res[k_big]
        # not only ordered, but separated by clearly more than the Monte-Carlo error
        assert m_big - m_small > 3 * math.hypot(se_small, se_big)


def test_iw_approaches_log_px_from_below(iw_results) -> None:
    log_px, elbo, res = iw_results
    mean, se = res[1000]
    assert mean <= log_px + 3 * se
    assert log_px - mean < 0.03 * (log_px - elbo)
    for k, (m, s) in res.items():
        assert m <= log_px + 3 * s, k


def test_iw_exact_posterior_has_zero_variance() -> None:
    x = torch.tensor([1.2, -0.7, 0.1], dtype=F64)
    m, v = _toy_posterior(x)
    log_px = _toy_log_px(x)
    for k in (1, 10, 1000):
        est = iw_log_marginal(*_toy_log_weights(x, m, v, reps=8, k=k, seed=12))
        assert est.shape == (8,)
        torch.testing.assert_close(est, torch.full((8,), log_px, dtype=F64), rtol=0, atol=1e-10)


def test_iw_log_marginal_formula_and_stability() -> None:
    lw = torch.tensor([[1000.0, 1000.0, 1000.0, 1000.0], [-1000.0, -1001.0, -1002.0, -1003.0]], dtype=F64)
    zeros = torch.zeros_like(lw)
    est = iw_log_marginal(lw, zeros, zeros)
    assert est[0].item() == pytest.approx(1000.0, abs=1e-12)
    ref = -1000.0 + math.log(sum(math.exp(-j) for j in range(4))) - math.log(4)
    assert est[1].item() == pytest.approx(ref, abs=1e-12)
    # components enter as log p(x|z) + log p(z) - log q(z|x)
    a, b, c = (torch.randn(3, 5, generator=_gen(s), dtype=F64) for s in (13, 14, 15))
    ref = torch.logsumexp(a + b - c, dim=-1) - math.log(5)
    torch.testing.assert_close(iw_log_marginal(a, b, c), ref)


# ---------------------------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------------------------


def test_perplexity_uniform_model_is_vocab_size() -> None:
    vocab, tokens = 10_000, 12_345
    assert perplexity(tokens * math.log(vocab), tokens) == pytest.approx(vocab, rel=1e-12)


def test_perplexity_known_probabilities() -> None:
    probs = [0.5, 0.25, 0.125, 0.5, 0.9]
    nll = -sum(math.log(p) for p in probs)
    geo_mean = math.prod(probs) ** (1 / len(probs))
    assert perplexity(nll, len(probs)) == pytest.approx(1 / geo_mean, rel=1e-12)


def test_perplexity_edge_cases() -> None:
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Mutual information
# ---------------------------------------------------------------------------------------------------------------


def _mi_brute_force_tensor(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> float:
    """Unchunked He et al. `calc_mi` computation with the full [N, N, nz] difference tensor."""
    mu, logvar, z = mu.double(), logvar.double(), z.double()
    n, nz = mu.shape
    neg_entropy = (-0.5 * nz * LOG_2PI - 0.5 * (1 + logvar).sum(-1)).mean()
    dev = z.unsqueeze(1) - mu.unsqueeze(0)  # [N, M, nz]
    log_density = -0.5 * (dev.square() / logvar.exp().unsqueeze(0)).sum(-1) - 0.5 * (
        nz * LOG_2PI + logvar.sum(-1)
    ).unsqueeze(0)
    log_qz = torch.logsumexp(log_density, dim=1) - math.log(n)
    return (neg_entropy - log_qz.mean()).item()


def _mi_brute_force_python(mu: list[list[float]], logvar: list[list[float]], z: list[list[float]]) -> float:
    """Plain-Python double loop over query items i and aggregate components m."""
    n, nz = len(mu), len(mu[0])
    total = 0.0
    for i in range(n):
        neg_ent = -0.5 * nz * math.log(2 * math.pi) - 0.5 * sum(1 + lv for lv in logvar[i])
        logs = []
        for m in range(n):
            s = 0.0
            for j in range(nz):
                var = math.exp(logvar[m][j])
                s += -0.5 * math.log(2 * math.pi * var) - (z[i][j] - mu[m][j]) ** 2 / (2 * var)
            logs.append(s)
        top = max(logs)
        log_qz = top + math.log(sum(math.exp(v - top) for v in logs)) - math.log(n)
        total += neg_ent - log_qz
    return total / n


def _rademacher_z(mu: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
    """z = mu + sigma * eps with eps_ij = +-1, so sum_j eps_ij^2 = nz exactly (no sampling noise in the bound)."""
    eps = torch.randint(0, 2, mu.shape, generator=_gen(seed)).to(mu.dtype) * 2 - 1
    return mu + torch.exp(0.5 * logvar) * eps


def test_mi_matches_python_double_loop() -> None:
    g = _gen(20)
    mu = torch.randn(6, 3, generator=g, dtype=F64)
    logvar = 0.5 * torch.randn(6, 3, generator=g, dtype=F64)
    z = sample_posterior(mu, logvar, generator=g)
    ref = _mi_brute_force_python(mu.tolist(), logvar.tolist(), z.tolist())
    mi, m = mutual_information(mu, logvar, z=z)
    assert m == 6
    assert mi == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 7, 53])
def test_mi_chunked_equals_unchunked(chunk_size: int) -> None:
    g = _gen(21)
    n, nz = 53, 5
    mu = torch.randn(n, nz, generator=g) * 1.5
    logvar = torch.randn(n, nz, generator=g) - 1.0
    z = sample_posterior(mu, logvar, generator=g)
    ref = _mi_brute_force_tensor(mu, logvar, z)
    mi, m = mutual_information(mu, logvar, z=z, chunk_size=chunk_size)
    assert m == n
    assert mi == pytest.approx(ref, abs=1e-9)


def test_mi_block_variant_is_size_weighted_mean_of_blocks() -> None:
    g = _gen(22)
    n, nz, pool = 70, 4, 32  # blocks of 32, 32, 6
    mu = torch.randn(n, nz, generator=g)
    logvar = torch.randn(n, nz, generator=g) * 0.5
    z = sample_posterior(mu, logvar, generator=g)
    blocks = [(s, min(s + pool, n)) for s in range(0, n, pool)]
    ref = sum((e - s) * _mi_brute_force_tensor(mu[s:e], logvar[s:e], z[s:e]) for s, e in blocks) / n
    mi, m = mutual_information(mu, logvar, z=z, pool_size=pool, chunk_size=5)
    assert m == pool
    assert mi == pytest.approx(ref, abs=1e-9)
    # a pool at least as large as the set is the whole-set estimate
    whole, m_whole = mutual_information(mu, logvar, z=z)
    big, m_big = mutual_information(mu, logvar, z=z, pool_size=1000)
    assert big == pytest.approx(whole, abs=1e-12)
    assert m_whole == n and m_big == n


def test_mi_encoder_ignoring_x_is_zero() -> None:
    n, nz = 400, 8
    mu = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5, -0.2, 1.1, 0.7], dtype=F64).expand(n, nz).clone()
    logvar = torch.tensor([0.1, -0.5, 0.3, -1.0, 0.0, 0.2, -0.3, 0.4], dtype=F64).expand(n, nz).clone()
    # with sampled z: only the noise of the one-sample estimator remains (sd ~ sqrt(nz / 2N) = 0.1)
    mi, m = mutual_information(mu, logvar, generator=_gen(23))
    assert m == n
    assert abs(mi) < 0.4
    mi_block, m_block = mutual_information(mu, logvar, pool_size=32, generator=_gen(23))
    assert m_block == 32
    assert abs(mi_block) < 0.4
    # with sum_j eps_ij^2 = nz for every item the estimate is exactly 0
    mi_exact, _ = mutual_information(mu, logvar, z=_rademacher_z(mu, logvar, 24))
    assert mi_exact == pytest.approx(0.0, abs=1e-9)


def test_mi_bounded_by_log_m_and_reaches_it_for_separated_posteriors() -> None:
    g = _gen(25)
    n, nz, pool = 128, 4, 32
    # float64 inputs: in float32, z - mu for sigma = 1e-3 would carry rounding error of the size being tested
    mu = torch.randn(n, nz, generator=g, dtype=F64) * 5.0  # well separated relative to sigma = 1e-3
    logvar = torch.full((n, nz), 2 * math.log(1e-3), dtype=F64)
    z = _rademacher_z(mu, logvar, 26)
    mi, m = mutual_information(mu, logvar, z=z)
    assert m == n
    assert mi <= math.log(n) + 1e-9
    assert mi == pytest.approx(math.log(n), abs=1e-6)
    mi_b, m_b = mutual_information(mu, logvar, z=z, pool_size=pool)
    assert m_b == pool
    assert mi_b <= math.log(pool) + 1e-9
    assert mi_b == pytest.approx(math.log(pool), abs=1e-6)
    # sampled z: approximately log M (the analytic first term leaves O(sqrt(nz / 2N)) noise)
    mi_s, _ = mutual_information(mu, logvar, generator=_gen(27))
    assert abs(mi_s - math.log(n)) < 0.6


def test_mi_never_above_log_m_for_arbitrary_posteriors() -> None:
    # For any mu/logvar, with sum_j eps_ij^2 = nz per item, log q(z_i) >= log q(z_i|x_i) - log M bounds the
    # estimate by log M exactly.
    for seed in range(5):
        g = _gen(100 + seed)
        n, nz = 40, 3
        mu = torch.randn(n, nz, generator=g, dtype=F64) * (seed + 1)
        logvar = torch.randn(n, nz, generator=g, dtype=F64) * 2
        z = _rademacher_z(mu, logvar, 200 + seed)
        mi, m = mutual_information(mu, logvar, z=z)
        assert mi <= math.log(m) + 1e-9
        mi_b, m_b = mutual_information(mu, logvar, z=z, pool_size=8)
        assert mi_b <= math.log(m_b) + 1e-9


def test_mi_generator_draw_matches_explicit_z() -> None:
    g = _gen(28)
    mu = torch.randn(30, 4, generator=g)
    logvar = torch.randn(30, 4, generator=g) * 0.3
    mi_gen, _ = mutual_information(mu, logvar, generator=_gen(29))
    z = sample_posterior(mu, logvar, generator=_gen(29))
    mi_z, _ = mutual_information(mu, logvar, z=z)
    assert mi_gen == pytest.approx(mi_z, abs=1e-12)


def test_mi_not_clipped_and_single_item() -> None:
    n, nz = 50, 6
    mu = torch.zeros(n, nz)
    logvar = torch.zeros(n, nz)
    # eps_ij = 0.5: every per-item term is 1/2 sum_j (eps^2 - 1) < 0 -> negative estimate, returned as is
    z = mu + 0.5
    mi, _ = mutual_information(mu, logvar, z=z)
    assert mi == pytest.approx(0.5 * nz * (0.25 - 1.0), abs=1e-9)
    # N = 1: M = 1, the aggregate is the posterior itself
    mi1, m1 = mutual_information(mu[:1], logvar[:1], z=z[:1])
    assert m1 == 1
    assert mi1 == pytest.approx(0.5 * nz * (0.25 - 1.0), abs=1e-9)
    mi1_s, _ = mutual_information(mu[:1], logvar[:1], generator=_gen(30))
    assert math.isfinite(mi1_s)


# ---------------------------------------------------------------------------------------------------------------
# Active units
# ---------------------------------------------------------------------------------------------------------------


def _mu_with_variances(variances: list[float], n: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    cols = []
    for v in variances:
        c = torch.randn(n, generator=g, dtype=F64)
        c = (c - c.mean()) / c.std(unbiased=True)
        cols.append(c * math.sqrt(v) + 3.0)  # offset: the mean must not matter
    return torch.stack(cols, dim=1)


def test_active_units_counts_known_variances() -> None:
    mu = _mu_with_variances([0.0, 0.005, 0.02, 1.0], n=200, seed=40)
    count, var = active_units(mu)
    assert count == 2
    torch.testing.assert_close(var, torch.tensor([0.0, 0.005, 0.02, 1.0], dtype=F64), rtol=1e-9, atol=1e-12)


def test_active_units_unbiased_variance() -> None:
    mu = torch.randn(7, 5, generator=_gen(41))
    _, var = active_units(mu)
    torch.testing.assert_close(var, torch.var(mu.double(), dim=0, unbiased=True))
    # the biased (1/N) variance would differ by N/(N-1)
    assert not torch.allclose(var, torch.var(mu.double(), dim=0, unbiased=False))


def test_active_units_threshold_configurable() -> None:
    mu = _mu_with_variances([0.0, 0.005, 0.02, 1.0], n=200, seed=42)
    assert active_units(mu, delta=0.004)[0] == 3
    assert active_units(mu, delta=0.5)[0] == 1
    assert active_units(mu, delta=2.0)[0] == 0
    assert active_units(mu, delta=0.2)[0] == 1  # DELLA's threshold
    # the comparison is >=
    _, var = active_units(mu)
    assert active_units(mu, delta=float(var[2]))[0] == 2


def test_active_units_too_few_items() -> None:
    for n in (0, 1):
        count, var = active_units(torch.ones(n, 6))
        assert count == 0
        assert torch.equal(var, torch.zeros(6, dtype=F64))


# ---------------------------------------------------------------------------------------------------------------
# Linear probe and majority baseline
# ---------------------------------------------------------------------------------------------------------------


def _blobs(n_per_class: int, centres: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    xs, ys = [], []
    for c, centre in enumerate(centres):
        xs.append(centre + scale * torch.randn(n_per_class, centres.shape[1], generator=g))
        ys.append(torch.full((n_per_class,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def test_probe_separable_blobs() -> None:
    centres = torch.tensor([[4.0, 0.0, 0.0, 100.0], [0.0, 4.0, 0.0, 100.0], [0.0, 0.0, 4.0, 100.0]])
    tr_x, tr_y = _blobs(200, centres, 0.5, seed=50)
    te_x, te_y = _blobs(100, centres, 0.5, seed=51)
    acc = linear_probe_accuracy(tr_x, tr_y, te_x, te_y, n_classes=3)
    assert acc >= 0.99


def test_probe_constant_feature_is_guarded() -> None:
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    tr_x, tr_y = _blobs(100, centres, 0.5, seed=52)
    te_x, te_y = _blobs(100, centres, 0.5, seed=53)
    const = torch.full((200, 1), 7.0)
    acc = linear_probe_accuracy(torch.cat([tr_x, const], 1), tr_y, torch.cat([te_x, const], 1), te_y, 2)
    assert math.isfinite(acc) and acc >= 0.97
    # all features constant: the probe can only learn the class prior -> majority baseline
    y_imbalanced = (torch.arange(200) < 130).long()
    acc_c = linear_probe_accuracy(const, y_imbalanced, const, te_y, n_classes=2)
    assert acc_c == pytest.approx(majority_baseline(y_imbalanced, te_y))


def test_probe_uninformative_features_near_majority() -> None:
    g = _gen(54)
    n_tr, n_te, d = 2000, 1000, 5
    y_tr = (torch.rand(n_tr, generator=g) < 0.3).long() + (torch.rand(n_tr, generator=g) < 0.1).long()
    y_te = (torch.rand(n_te, generator=g) < 0.3).long() + (torch.rand(n_te, generator=g) < 0.1).long()
    x_tr = torch.randn(n_tr, d, generator=g)
    x_te = torch.randn(n_te, d, generator=g)
    acc = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, n_classes=3)
    base = majority_baseline(y_tr, y_te)
    assert base > 0.5
    assert abs(acc - base) < 0.05


def test_probe_deterministic() -> None:
    g = _gen(55)
    x_tr = torch.randn(300, 4, generator=g)
    y_tr = (x_tr[:, 0] + 0.8 * torch.randn(300, generator=g) > 0).long()
    x_te = torch.randn(200, 4, generator=g)
    y_te = (x_te[:, 0] + 0.8 * torch.randn(200, generator=g) > 0).long()
    a1 = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, n_classes=2, seed=3)
    a2 = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, n_classes=2, seed=3)
    assert a1 == a2
    assert 0.6 < a1 < 1.0


def test_majority_baseline() -> None:
    train_y = torch.tensor([2, 2, 1, 2, 0, 1])
    test_y = torch.tensor([2, 0, 2, 1])
    assert majority_baseline(train_y, test_y) == pytest.approx(0.5)
    # ties go to the smallest label
    assert majority_baseline(torch.tensor([3, 1, 3, 1]), torch.tensor([1, 3, 3])) == pytest.approx(1 / 3)


def test_probe_on_posterior_samples_ignores_a_trace_far_below_sigma() -> None:
    """A collapsed posterior whose μ carries the factor at a scale of 1e-4 while σ = 1: a probe on standardised μ
    reads it perfectly, one on samples z ~ q(z|x) (what ablate reports) sees noise; a posterior with the factor at
    a scale well above σ is read from samples too."""
    from ablate.engine.evaluate import probe_features

    g = _gen(56)
    y_tr = torch.randint(0, 2, (1000,), generator=g)
    y_te = torch.randint(0, 2, (500,), generator=g)

    def posterior(y: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        mu = torch.zeros(len(y), 4, dtype=F64)
        mu[:, 0] = scale * (2.0 * y - 1.0)
        return mu, torch.zeros_like(mu)  # σ = 1

    (mu_tr, lv_tr), (mu_te, lv_te) = posterior(y_tr, 1e-4), posterior(y_te, 1e-4)
    assert linear_probe_accuracy(mu_tr, y_tr, mu_te, y_te, n_classes=2) == 1.0
    z_acc = linear_probe_accuracy(probe_features(mu_tr, lv_tr, 0), y_tr, probe_features(mu_te, lv_te, 1), y_te, 2)
    assert abs(z_acc - 0.5) < 0.06
    (mu_tr, lv_tr), (mu_te, lv_te) = posterior(y_tr, 3.0), posterior(y_te, 3.0)
    z_acc = linear_probe_accuracy(probe_features(mu_tr, lv_tr, 0), y_tr, probe_features(mu_te, lv_te, 1), y_te, 2)
    assert z_acc > 0.99  # P(|N(3, 1)| on the wrong side of 0) = Φ(−3) ≈ 0.0013


# --- the paired MI estimator (issue 23): its noise across 20 estimator seeds at N = 1000, nz = 32 ----------------

def _posteriors(kind: str, n: int = 1000, nz: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """collapsed: every q(z|x) ≈ N(0, I) (μ ~ 1e-3, as a collapsed encoder leaves them); informative: μ spread
    0.3 per dimension against σ² ≈ 0.95 (MI ≈ 1.4 nats, a partly used latent)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "collapsed":
        return (1e-3 * torch.randn(n, nz, generator=g)).double(), (-1e-3 * torch.rand(n, nz, generator=g)).double()
    return (0.3 * torch.randn(n, nz, generator=g)).double(), torch.full((n, nz), -0.05, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["collapsed", "informative"])
def test_paired_mi_resolves_what_he_et_al_s_estimate_cannot(kind):
    from ablate.metrics.estimators import mutual_information_paired

    mu, logvar = _posteriors(kind)
    paired = [mutual_information_paired(mu, logvar, samples=8, generator=torch.Generator().manual_seed(s))[0]
              for s in range(20)]
    he = [mutual_information(mu, logvar, generator=torch.Generator().manual_seed(s))[0] for s in range(20)]
    assert statistics.stdev(paired) <= 0.03 and statistics.stdev(he) > 0.09  # ≈ √(nz / 2N) = 0.13
    if kind == "collapsed":
        assert abs(statistics.mean(paired)) <= 0.03
    else:  # the same quantity: the means agree within He et al.'s noise
        assert abs(statistics.mean(paired) - statistics.mean(he)) < 3 * statistics.stdev(he) / math.sqrt(20)


def test_paired_mi_against_a_brute_force_double_loop():
    from ablate.metrics.estimators import mutual_information_paired

    g = torch.Generator().manual_seed(3)
    n, nz, s = 7, 3, 4
    mu, logvar = torch.randn(n, nz, generator=g).double(), (0.5 * torch.randn(n, nz, generator=g)).double()
    estimate, m = mutual_information_paired(mu, logvar, samples=s, generator=torch.Generator().manual_seed(9),
                                            block_sizes=[3, 4])
    eps = torch.randn((n, s, nz), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    normal = torch.distributions.Normal
    total = 0.0
    for block in (range(0, 3), range(3, 7)):
        for i in block:
            for k in range(s):
                z = mu[i] + (0.5 * logvar[i]).exp() * eps[i, k]
                own = normal(mu[i], (0.5 * logvar[i]).exp()).log_prob(z).sum()
                agg = torch.logsumexp(torch.stack([normal(mu[m_], (0.5 * logvar[m_]).exp()).log_prob(z).sum()
                                                   for m_ in block]), 0) - math.log(len(block))
                total += float(own - agg)
    assert m == 4 and abs(estimate - total / (n * s)) < 1e-10
