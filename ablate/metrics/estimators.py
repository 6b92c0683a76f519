"""Evaluation metrics for text VAEs: pure functions of tensors.

Conventions follow the project reference (REFERENCE.md, section 1; results/README.md "Conventions in full"). Notation:
q(z|x) = N(mu, diag exp(logvar)), prior p(z) = N(0, I), nz latent dimensions, all densities in nats.

Tensor-valued functions return the (promoted) dtype of their inputs so that they can sit inside a training loss;
where precision matters (KL, logsumexp over samples or over the aggregate posterior) they compute in float64
internally. Scalar estimates are returned as plain Python floats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "LOG_2PI",
    "gaussian_kl_per_dim",
    "gaussian_kl",
    "log_normal_diag",
    "log_standard_normal",
    "sample_posterior",
    "iw_log_marginal",
    "perplexity",
    "mutual_information",
    "active_units",
    "linear_probe_accuracy",
    "majority_baseline",
]

LOG_2PI: float = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------------------
# Gaussian densities and KL
# --------------------------------------------------------------------------------------------------------------


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) for each dimension, shape [..., nz] (Kingma & Welling 2014, App. B).

    KL_j = 1/2 (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1), evaluated as 1/2 (mu^2 + expm1(logvar) - logvar) in
    float64 so that it stays accurate (and >= 0) near the prior. Returned in the inputs' dtype; differentiable.
    """
    return _kl_per_dim_float64(mu, logvar).to(torch.promote_types(mu.dtype, logvar.dtype))


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || p(z)) summed over the last (latent) dimension, nats, shape [...] (Kingma & Welling 2014)."""
    return _kl_per_dim_float64(mu, logvar).sum(-1).to(torch.promote_types(mu.dtype, logvar.dtype))


def _kl_per_dim_float64(mu: Tensor, logvar: Tensor) -> Tensor:
    """The one KL formula: 1/2 (mu^2 + expm1(logvar) - logvar), in float64."""
    lv64 = logvar.to(torch.float64)
    return 0.5 * (mu.to(torch.float64).square() + torch.expm1(lv64) - lv64)


def log_normal_diag(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dimension (Kingma & Welling 2014).

    Broadcasts in the usual torch way, e.g. z [B, K, nz] with mu, logvar [B, 1, nz] gives [B, K].
    """
    nz = z.shape[-1]
    sq = (z - mu).square() * torch.exp(-logvar)
    return -0.5 * (nz * LOG_2PI + (logvar + sq).sum(-1))


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension (the VAE prior, Kingma & Welling 2014)."""
    nz = z.shape[-1]
    return -0.5 * (nz * LOG_2PI + z.square().sum(-1))


def sample_posterior(
    mu: Tensor,
    logvar: Tensor,
    k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reparameterised samples z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014).

    k=None: one sample per item, shape of mu ([B, nz]); k=int: k samples per item, shape [B, k, nz]
    (in general [..., k, nz]). Differentiable with respect to mu and logvar.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        mu = mu.unsqueeze(-2)
        logvar = logvar.unsqueeze(-2)
        shape = mu.shape[:-2] + (k, mu.shape[-1])
    else:
        shape = mu.shape
    eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


# --------------------------------------------------------------------------------------------------------------
# Likelihood
# --------------------------------------------------------------------------------------------------------------


def iw_log_marginal(log_px_given_z: Tensor, log_pz: Tensor, log_qz_given_x: Tensor) -> Tensor:
    """Importance-weighted estimate of log p(x) (Burda et al. 2016), [B, K] each -> [B].

    log p_hat(x) = logsumexp_k (log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K with z_k ~ q(z|x).
    K = 1 is the single-sample ELBO; the expectation does not decrease with K and is <= log p(x).
    The logsumexp runs in float64; the result is returned in the inputs' dtype.
    """
    out_dtype = torch.promote_types(torch.promote_types(log_px_given_z.dtype, log_pz.dtype), log_qz_given_x.dtype)
    log_w = (
        log_px_given_z.to(torch.float64) + log_pz.to(torch.float64) - log_qz_given_x.to(torch.float64)
    )
    if log_w.dim() < 1 or log_w.shape[-1] < 1:
        raise ValueError(f"expected [..., K] log-weights with K >= 1, got shape {tuple(log_w.shape)}")
    k = log_w.shape[-1]
    return (torch.logsumexp(log_w, dim=-1) - math.log(k)).to(out_dtype)


def perplexity(total_nll: float, total_tokens: int) -> float:
    """Perplexity exp(sum_i NLL_i / sum_i T_i) from a corpus-level NLL in nats and a token count.

    Which NLL (IW or -ELBO) and which tokens are counted is the caller's convention (REFERENCE.md section 1).
    Returns inf when the exponent overflows.
    """
    if total_tokens <= 0:
        raise ValueError(f"total_tokens must be positive, got {total_tokens}")
    try:
        return math.exp(float(total_nll) / total_tokens)
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------------------------------------------
# Latent-space diagnostics
# --------------------------------------------------------------------------------------------------------------


def log_density_blocks(z: Tensor, mu: Tensor, logvar: Tensor, chunk_size: int):
    """Yield (start, log N(z_i; mu_m, diag exp(logvar_m)) for the rows i of z from `start`, as [c, M]) (float64).

    Uses the expanded quadratic form sum_j (z_j - mu_j)^2 / v_j = z^2 . (1/v) - 2 z . (mu/v) + mu^2 . (1/v), so
    memory is O(chunk_size * M) rather than O(chunk_size * M * nz). Inputs are centred on the mean of mu first to
    limit cancellation, and each row's largest term is recomputed from the direct form.
    """
    m, nz = mu.shape
    centre = mu.mean(0, keepdim=True)
    zc = z - centre
    muc = mu - centre
    prec = torch.exp(-logvar)  # [M, nz]
    prec_t = prec.t().contiguous()  # [nz, M]
    mu_prec_t = (muc * prec).t().contiguous()  # [nz, M]
    mu_sq = (muc.square() * prec).sum(-1)  # [M]
    log_norm = -0.5 * (nz * LOG_2PI + logvar.sum(-1))  # [M]
    for start in range(0, z.shape[0], chunk_size):
        zq = zc[start : start + chunk_size]  # [c, nz]
        quad = zq.square() @ prec_t
        quad.addmm_(zq, mu_prec_t, alpha=-2.0)
        quad.add_(mu_sq)
        quad.clamp_(min=0.0)  # a sum of squares; only rounding can make it negative
        log_dens = log_norm - 0.5 * quad  # [c, M]
        # The expanded form loses ~eps * sum(mu^2 / v) to cancellation; recompute the dominant term of each row
        # directly so that the logsumexp is exact wherever one component dominates (e.g. tiny variances).
        top = log_dens.argmax(dim=1, keepdim=True)  # [c, 1]
        idx = top.squeeze(1)
        exact_quad = ((zq - muc[idx]).square() * prec[idx]).sum(-1, keepdim=True)
        log_dens.scatter_(1, top, log_norm[idx].unsqueeze(1) - 0.5 * exact_quad)
        yield start, log_dens


def _log_aggregate_density(z: Tensor, mu: Tensor, logvar: Tensor, chunk_size: int) -> Tensor:
    """log q(z_i) = logsumexp_m log N(z_i; mu_m, diag exp(logvar_m)) - log M for each row of z (float64)."""
    out = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    for start, log_dens in log_density_blocks(z, mu, logvar, chunk_size):
        out[start : start + log_dens.shape[0]] = torch.logsumexp(log_dens, dim=1)
    return out - math.log(mu.shape[0])


def mutual_information(
    mu: Tensor,
    logvar: Tensor,
    z: Tensor | None = None,
    pool_size: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
    block_sizes: list[int] | None = None,
) -> tuple[float, int]:
    """I_q(x; z) estimate in nats (Hoffman & Johnson 2016; He et al. 2019 eq. 5, `calc_mi` of vae-lagging-encoder).

    I = E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], q(z) = (1/M) sum_m q(z|x_m). The first term is analytic,
    mean_i(-nz/2 log 2pi - 1/2 sum_j (1 + logvar_ij)); the second uses one sample z_i ~ q(z|x_i) per item (``z``
    [N, nz], or drawn from ``generator``) with log q(z_i) = logsumexp_m log N(z_i; mu_m, var_m) - log M.

    pool_size=None: the aggregate is the whole set, M = N (Li et al. 2019 / Optimus), evaluated in chunks of
    ``chunk_size`` query items. pool_size=m: consecutive blocks of m items each form their own aggregate (He et al.
    use minibatches, M = 32; a shorter last block uses its own size) and the per-block estimates are averaged
    weighted by block size. The true MI is bounded by log M; values compare only at equal M. Negative values
    (estimator noise near collapse) are not clipped. Because the first term is analytic and the second sampled,
    a single estimate can exceed log M by 1/2 mean_i sum_j (eps_ij^2 - 1) (sampling noise of order
    sqrt(nz / (2N))).

    block_sizes=[n_1, n_2, ...] (summing to N): consecutive blocks of those sizes instead of equal ones — He et al.'s
    `create_data_batch` batches, each of at most 32 sentences of one length, come out this way (see
    `length_batches`); pool_size is then the largest block.

    Returns (estimate, M): M = N for the whole-set variant, min(pool_size, N) for the block variant.
    With N = 1 the aggregate is the posterior itself (M = 1) and the estimate is pure sampling noise around 0.
    """
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(f"expected mu, logvar of shape [N, nz], got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    n, nz = mu.shape
    if n == 0:
        raise ValueError("mutual_information needs at least one item")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if pool_size is not None and pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    mu = mu.detach()
    logvar = logvar.detach()
    if z is None:
        z = sample_posterior(mu, logvar, generator=generator)
    elif z.shape != mu.shape:
        raise ValueError(f"z must have shape {tuple(mu.shape)}, got {tuple(z.shape)}")
    mu64 = mu.to(torch.float64)
    lv64 = logvar.to(torch.float64)
    z64 = z.detach().to(torch.float64)

    neg_entropy = -0.5 * nz * LOG_2PI - 0.5 * (1.0 + lv64).sum(-1)  # [N]
    if block_sizes is not None:
        if sum(block_sizes) != n or min(block_sizes) < 1:
            raise ValueError(f"block_sizes must be positive and sum to {n}, got {sum(block_sizes)}")
        log_qz = torch.empty(n, dtype=torch.float64, device=mu.device)
        start = 0
        for size in block_sizes:
            sl = slice(start, start + size)
            log_qz[sl] = _log_aggregate_density(z64[sl], mu64[sl], lv64[sl], chunk_size)
            start += size
        m_used = max(block_sizes)
    elif pool_size is None:
        log_qz = _log_aggregate_density(z64, mu64, lv64, chunk_size)
        m_used = n
    else:
        log_qz = torch.empty(n, dtype=torch.float64, device=mu.device)
        for start in range(0, n, pool_size):
            sl = slice(start, start + pool_size)
            log_qz[sl] = _log_aggregate_density(z64[sl], mu64[sl], lv64[sl], chunk_size)
        m_used = min(pool_size, n)
    # Mean over items == block-size-weighted mean of the per-block estimates.
    return float((neg_entropy - log_qz).mean().item()), m_used


def paired_draws(mu: Tensor, logvar: Tensor, samples: int, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
    """The paired MI estimate's draws z_is ~ q(z|x_i) [N, S, nz] and log q(z_is|x_i) [N, S] (float64)."""
    n, nz = mu.shape
    eps = torch.randn((n, samples, nz), generator=generator, dtype=torch.float64, device=mu.device)
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps
    # log q(z_is | x_i) at its own posterior: −nz/2 log 2π − ½ Σ_j (log σ²_ij + ε²_ijs)
    return z, -0.5 * (nz * LOG_2PI + logvar.sum(-1, keepdim=True) + eps.square().sum(-1))


def mutual_information_paired(
    mu: Tensor,
    logvar: Tensor,
    samples: int = 16,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
    block_sizes: list[int] | None = None,
    draws: tuple[Tensor, Tensor] | None = None,
) -> tuple[float, int]:
    """A low-variance I_q(x; z) estimate: both terms at the same S draws per item (paired).

    I = E_x E_q(z|x)[log q(z|x) − log q(z)] (Hoffman & Johnson 2016), estimated as the mean over items i and draws
    z_is ~ q(z|x_i), s = 1..S, of log q(z_is|x_i) − log q(z_is), with q(z) = (1/M) Σ_m q(z|x_m) over the whole set
    (or each of `block_sizes`' consecutive blocks). He et al.'s estimator (`mutual_information`) takes the first
    term analytically and the second from one draw, so the draw's noise, ½·mean_i Σ_j (ε_ij² − 1), of standard
    deviation √(nz / 2N), stays in the estimate: ±0.13 nats at nz 32, N 1000, and its mean at collapse is 0 only
    in expectation. Here the two terms share the draw and the noise largely cancels: on a collapsed posterior
    (every q(z|x_m) alike) each term is exactly 0, and S draws average the rest. Like He et al.'s, the estimate is
    ≤ log M (each log-ratio is, since q(z_is) ≥ q(z_is|x_i) / M).

    `draws`: the (z, log q(z|x)) of `paired_draws` when the caller already made them (else drawn from `generator`).
    Returns (estimate, M).
    """
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(f"expected mu, logvar of shape [N, nz], got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    n, nz = mu.shape
    if n == 0 or samples < 1:
        raise ValueError("mutual_information_paired needs at least one item and one sample")
    sizes = block_sizes if block_sizes is not None else [n]
    if sum(sizes) != n or min(sizes) < 1:
        raise ValueError(f"block_sizes must be positive and sum to {n}, got {sum(sizes)}")
    mu64, lv64 = mu.detach().to(torch.float64), logvar.detach().to(torch.float64)
    z, log_own = draws if draws is not None else paired_draws(mu64, lv64, samples, generator)
    total, start = 0.0, 0
    for size in sizes:
        block = slice(start, start + size)
        queries = z[block].reshape(size * samples, nz)  # [size·S, nz], row i·S + s
        log_agg = _log_aggregate_density(queries, mu64[block], lv64[block], chunk_size).view(size, samples)
        total += float((log_own[block] - log_agg).sum())
        start += size
    return total / (n * samples), max(sizes)


def length_batches(lengths: list[int], batch_size: int) -> tuple[list[int], list[int]]:
    """He et al. 2019's evaluation batches (vae-lagging-encoder `data/text_data.py: create_data_batch`): the items
    sorted by length, each run of one length cut into batches of at most `batch_size`. Returns (order, sizes): the
    item indices in batch order and each batch's size. Ties keep their split order (He et al.'s `np.argsort` does
    not promise one; which sentences of one length share a batch does not change the estimator's expectation)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes: list[int] = []
    run = 0
    for position, index in enumerate(order):
        run += 1
        last_of_length = position + 1 == len(order) or lengths[order[position + 1]] != lengths[index]
        if run == batch_size or last_of_length:
            sizes.append(run)
            run = 0
    return order, sizes


def active_units(mu: Tensor, delta: float = 0.01) -> tuple[int, Tensor]:
    """Active units (Burda et al. 2016): #dims j with Var_i(mu_ij) >= delta, unbiased variance over the N items.

    ``mu`` is [N, nz] (posterior means over the evaluation set). Returns (count, per-dim variances [nz], float64).
    With N < 2 the variance is undefined: returns (0, zeros).
    """
    if mu.dim() != 2:
        raise ValueError(f"expected mu of shape [N, nz], got {tuple(mu.shape)}")
    n, nz = mu.shape
    if n < 2 or nz == 0:  # no latent (a language model, nz 0): no unit to be active
        return 0, torch.zeros(nz, dtype=torch.float64, device=mu.device)
    var = mu.detach().to(torch.float64).var(dim=0, unbiased=True)
    return int((var >= delta).sum().item()), var


# --------------------------------------------------------------------------------------------------------------
# Probing the latent code for ground-truth factors
# --------------------------------------------------------------------------------------------------------------


def linear_probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    n_classes: int,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic-regression probe on standardised features.

    Features are standardised with the training mean and std (a constant feature, std ~ 0, is only centred).
    Loss: mean cross-entropy + l2 * ||W||^2 (bias not penalised), minimised full-batch in float64 by
    torch.optim.LBFGS (strong-Wolfe line search); weights start from N(0, 0.01^2) drawn with ``seed``, so the
    result is deterministic. Used to probe ground-truth factors from posterior samples (ablate.engine.evaluate.probe_features).
    """
    train_x = train_x.detach().to(torch.float64)
    test_x = test_x.detach().to(torch.float64)
    if train_x.dim() == 1:
        train_x = train_x.unsqueeze(1)
    if test_x.dim() == 1:
        test_x = test_x.unsqueeze(1)
    train_y = train_y.detach().long().reshape(-1)
    test_y = test_y.detach().long().reshape(-1)
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError("features and labels must have the same number of items")
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError("linear_probe_accuracy needs non-empty train and test sets")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError("train and test features must have the same width")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if int(train_y.min()) < 0 or int(train_y.max()) >= n_classes:
        raise ValueError(f"train labels must lie in [0, {n_classes})")

    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    xs_train = (train_x - mean) / std
    xs_test = (test_x - mean) / std

    d = xs_train.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w0 = 0.01 * torch.randn(d, n_classes, generator=gen, dtype=torch.float64)
    weight = w0.to(xs_train.device).requires_grad_(True)
    bias = torch.zeros(n_classes, dtype=torch.float64, device=xs_train.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        logits = xs_train @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, train_y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xs_test @ weight + bias).argmax(dim=1)
        return float((pred == test_y).double().mean().item())


def majority_baseline(train_y: Tensor, test_y: Tensor) -> float:
    """Test accuracy of always predicting the most frequent training class (ties: the smallest label)."""
    train_y = train_y.detach().long().reshape(-1)
    test_y = test_y.detach().long().reshape(-1)
    if train_y.numel() == 0 or test_y.numel() == 0:
        raise ValueError("majority_baseline needs non-empty train and test labels")
    if int(train_y.min()) < 0:
        raise ValueError("labels must be non-negative")
    majority = int(torch.bincount(train_y).argmax().item())
    return float((test_y == majority).double().mean().item())
