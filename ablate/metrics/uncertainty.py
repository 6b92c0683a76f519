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

MAX_BOOTSTRAP_ELEMENTS = 120_000_000  # N²·S' log-densities of the MI bootstrap at most: S' = S while N²·S fits


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
    s_used = max(1, min(s, MAX_BOOTSTRAP_ELEMENTS // max(1, n * n)))  # the first S' draws: the work is N²·S'·B
    queries = z[:, :s_used].reshape(n * s_used, nz).double()
    counts = torch.zeros(n, resamples, dtype=torch.float64)  # [N, B]: how often resample b drew sentence m
    counts.scatter_add_(0, indices.t(), torch.ones(n, resamples, dtype=torch.float64))
    log_agg = torch.empty(n * s_used, resamples, dtype=torch.float64)  # log Σ_m c_bm q(z_is|x_m), row i·S' + s
    drawn = counts > 0
    for first, dens in log_density_blocks(queries, mu64, lv64, chunk_size):
        sentence = torch.arange(first, first + dens.shape[0]) // s_used
        log_agg[first:first + dens.shape[0]] = log_weighted_sums(dens, counts, drawn[sentence])
    terms = own[:, :s_used].double().reshape(n, s_used, 1) - (log_agg.view(n, s_used, resamples) - math.log(n))
    return (counts * terms.sum(1)).sum(0) / (n * s_used)  # the mean over each resample's sentences and draws


def log_weighted_sums(dens: Tensor, counts: Tensor, needed: Tensor | None = None) -> Tensor:
    """log Σ_m counts[m, b] · exp(dens[i, m]) for every row i [c] and resample b [B], as [c, B] (float64).

    One matrix product with the densities scaled by their row's maximum: exact in float64 wherever resample b drew
    a sentence within ≈ 575 nats of that maximum. The pairs (i, b) where it did not are summed again by logsumexp
    over the drawn sentences — where `needed[i, b]` (default: all); the others (in the MI bootstrap: rows of
    sentences the resample did not draw, which it weighs by 0) keep a finite stand-in."""
    top = dens.max(1, keepdim=True).values
    sums = torch.exp(dens - top) @ counts
    low = sums < 1e-250  # every drawn sentence's term underflowed, or nearly: not to be trusted
    if needed is not None:
        low &= needed
    out = top + sums.clamp_min(1e-300).log()
    if bool(low.any()):
        rows, picks = low.nonzero(as_tuple=True)
        for start in range(0, len(rows), 256):
            r, b = rows[start:start + 256], picks[start:start + 256]
            out[r, b] = torch.logsumexp(dens[r] + counts[:, b].t().log(), 1)
    return out
