"""How uncertain a split's numbers are: standard errors over the evaluated sentences.

- Means over sentences (NLL, −ELBO, Rec, KL): the standard error of the mean, sd / √N.
- Perplexities exp(Σ NLL_i / Σ T_i): the delta method on the ratio estimator (Cochran 1977, §6.3):
  SE(R) = √(Σ_i (NLL_i − R·T_i)² / (N (N − 1))) / mean(T), SE(PPL) = PPL · SE(R).
- MI and AU: a bootstrap over sentences (Efron & Tibshirani 1993), reusing the encoded posteriors and the
  estimator's own draws: each resample re-forms the aggregate posterior from the resampled sentences (a sentence
  drawn twice counts twice). Where MI pools are blocks (He et al.'s batches), whole blocks are resampled.
The SE says how much the number would move with another test set of the same size from the same source; it does
not include the spread over training seeds (the report combines both).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ablate.metrics.estimators import log_density_blocks

MAX_BOOTSTRAP_ELEMENTS = 120_000_000  # log-densities kept for the MI bootstrap (float32: 480 MB)


def mean_se(values: Tensor) -> float:
    """Standard error of the mean of per-sentence values (NaN below two sentences)."""
    n = values.numel()
    return float(values.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan


def exp_ratio_se(num: Tensor, den: Tensor) -> float:
    """SE of exp(Σ num / Σ den) (a perplexity) by the delta method on the ratio estimator."""
    n = num.numel()
    if n < 2:
        return math.nan
    num, den = num.double(), den.double()
    ratio = num.sum() / den.sum()
    var = (num - ratio * den).square().sum() / (n * (n - 1)) / den.mean().square()
    return float(torch.exp(ratio) * var.sqrt())


def bootstrap_indices(n: int, resamples: int, generator: torch.Generator) -> Tensor:
    """[B, n] indices drawn with replacement (one row per resample)."""
    return torch.randint(0, n, (resamples, n), generator=generator)


def bootstrap_au(mu: Tensor, indices: Tensor, delta: float) -> Tensor:
    """AU (dimensions with Var_x E[z_j] ≥ δ, unbiased) of each resample [B]."""
    if mu.shape[-1] == 0 or len(indices) == 0:  # no latent: every resample has 0 active units
        return torch.zeros(len(indices), dtype=torch.float64)
    return torch.stack([(mu[idx].double().var(0, unbiased=True) >= delta).sum() for idx in indices]).double()


def bootstrap_mi(mu: Tensor, logvar: Tensor, z: Tensor, own: Tensor, resamples: int, generator: torch.Generator,
                 block_sizes: list[int] | None = None, chunk_size: int = 1024) -> Tensor:
    """The MI estimate of each bootstrap resample [B], for an estimator of the form
    mean_{i,s} [own_is − log q(z_is)], q(z) = (1/M) Σ_m q(z|x_m) over the pool (He et al.'s: S = 1, own_i the
    analytic −entropy; the paired one: S draws, own_is = log q(z_is|x_i)).

    z: [N, S, nz] the estimator's draws, own: [N, S]. Dataset pool (block_sizes None): `bootstrap_indices(N, B,
    generator)` resamples sentences, and the aggregate of each resample weighs sentence m by how often it was
    drawn. Blocks: each block's estimate is kept and whole blocks are resampled (size-weighted mean).
    """
    n, s, nz = z.shape
    mu64, lv64 = mu.double(), logvar.double()
    if block_sizes is not None:  # a cluster bootstrap over the pools
        sums, sizes, start = [], [], 0
        for size in block_sizes:
            block = slice(start, start + size)
            log_agg = torch.empty(size * s, dtype=torch.float64)
            queries = z[block].reshape(size * s, nz).double()
            for first, dens in log_density_blocks(queries, mu64[block], lv64[block], chunk_size):
                log_agg[first:first + dens.shape[0]] = torch.logsumexp(dens, 1) - math.log(size)
            sums.append(float((own[block].double().reshape(-1) - log_agg).sum()))
            sizes.append(size * s)
            start += size
        sums_t, sizes_t = torch.tensor(sums, dtype=torch.float64), torch.tensor(sizes, dtype=torch.float64)
        picks = bootstrap_indices(len(block_sizes), resamples, generator)
        return sums_t[picks].sum(1) / sizes_t[picks].sum(1)
    indices = bootstrap_indices(n, resamples, generator)
    s_used = max(1, min(s, MAX_BOOTSTRAP_ELEMENTS // max(1, n * n)))  # the first S' draws when memory is short
    queries = z[:, :s_used].reshape(n * s_used, nz).double()
    dens = torch.empty(n * s_used, n, dtype=torch.float32)  # log N(z_is; mu_m, sigma_m), row i·S' + s
    for first, block in log_density_blocks(queries, mu64, lv64, chunk_size):
        dens[first:first + block.shape[0]] = block.float()
    own_used = own[:, :s_used].double()
    out = torch.empty(resamples, dtype=torch.float64)
    log_agg = torch.empty(n * s_used, dtype=torch.float64)
    for b, idx in enumerate(indices):
        log_counts = torch.bincount(idx, minlength=n).double().log().float()  # −inf for sentences not drawn
        for first in range(0, n * s_used, chunk_size):
            log_agg[first:first + chunk_size] = torch.logsumexp(dens[first:first + chunk_size] + log_counts, 1)
        terms = own_used.reshape(-1) - (log_agg - math.log(n))  # [N·S'], row i·S' + s
        out[b] = terms.view(n, s_used)[idx].mean()
    return out
