"""Run a trained model over an evaluation split and compute the field's five metrics with ablate.metrics.estimators.

Per split: kl, rec, nelbo (single posterior sample), nll (importance-weighted, K samples), ppl (per token:
exp(Σ nll / Σ predicted tokens), counting </s>, never the start token), ppl_word (same NLL over words + </s>),
mi (He et al. 2019 estimator, aggregate posterior over the whole split or blocks of M), au (Burda et al. 2016),
and on corpora with ground-truth factors the linear-probe accuracy of each factor from a posterior sample z.
The conventions used are returned beside the numbers so every result row records them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ablate.core.config import EvalConfig
from ablate.core.progress import RunProgress
from ablate.core.seeds import derive
from ablate.data.batching import Batch, EncodedSplit, iterate_batches, select_rows
from ablate.data.tokenize import Framing
from ablate.metrics.estimators import (
    LOG_2PI,
    active_units,
    gaussian_kl,
    iw_log_marginal,
    length_batches,
    linear_probe_accuracy,
    log_normal_diag,
    log_standard_normal,
    majority_baseline,
    mutual_information,
    mutual_information_paired,
    paired_draws,
    sample_posterior,
)
from ablate.metrics.schema import SplitStats, emitted
from ablate.metrics.uncertainty import bootstrap_au, bootstrap_indices, bootstrap_mi
from ablate.models.base import TextVAE
from ablate.models.output_layer import output_block


@dataclass
class SplitEvaluation:
    metrics: dict[str, float]
    mu: Tensor  # [N, nz] in split order (for probes)
    logvar: Tensor  # [N, nz]
    conventions: dict[str, object]
    per_sentence: dict[str, Tensor] | None = None  # kl, rec, nll, tokens, words in split order


IW_PAIRS_PER_CHUNK = 512  # (sentence, sample) pairs per decoder pass of the importance-weighted NLL


@torch.no_grad()
def iw_log_px(model: TextVAE, batch: Batch, z: Tensor, block: int, pairs_per_chunk: int = IW_PAIRS_PER_CHUNK
              ) -> Tensor:
    """log p(x|z) [B, K] for latents z [B, K, nz], in chunks of (sentence, sample) pairs.

    The B·K pairs run through the decoder `pairs_per_chunk` at a time (a chunk may span sentences; each is cut to
    its own longest sentence), and only real positions reach the output layer, `block` positions at a time: the
    memory stays bounded and the matrix multiplies stay large whatever the batch and K.
    """
    b, k, nz = z.shape
    flat_z = z.reshape(b * k, nz)
    out = torch.empty(b * k, dtype=torch.float32, device=z.device)
    for start in range(0, b * k, pairs_per_chunk):
        pairs = torch.arange(start, min(start + pairs_per_chunk, b * k), device=z.device)
        rows = select_rows(batch, torch.div(pairs, k, rounding_mode="floor"))
        out[pairs] = model.log_likelihood(rows, flat_z[pairs], block=block)
    return out.view(b, k)


@torch.no_grad()
def iw_nll(model: TextVAE, batch: Batch, mu: Tensor, logvar: Tensor, k: int, block: int,
           generator: torch.Generator | None = None, pairs_per_chunk: int = IW_PAIRS_PER_CHUNK) -> Tensor:
    """−log p̂(x) per sentence with K importance samples from q(z|x) (Burda et al. 2016).

    All B·K draws are made at once, so the estimate does not depend on how the work is chunked.
    """
    z = sample_posterior(mu, logvar, k=k, generator=generator)  # [B, K, nz]
    log_px = iw_log_px(model, batch, z, block, pairs_per_chunk)
    return -iw_log_marginal(log_px, log_standard_normal(z), log_normal_diag(z, mu.unsqueeze(1), logvar.unsqueeze(1)))


@torch.no_grad()
def encode_all(model: TextVAE, split: EncodedSplit, framing: Framing, batch_size: int,
               device: torch.device) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of every sentence, in split order."""
    model.eval()
    mu = torch.zeros(len(split), model.nz, dtype=torch.float64)
    logvar = torch.zeros_like(mu)
    for batch in iterate_batches(split, framing, batch_size):
        m, lv = model.encode(batch.to(device))
        mu[batch.index] = m.double().cpu()
        logvar[batch.index] = lv.double().cpu()
    return mu, logvar


@torch.no_grad()
def evaluate_split(model: TextVAE, split: EncodedSplit, framing: Framing, vocab_size: int, cfg: EvalConfig,
                   device: torch.device, seed: int, token_unit: str, progress: RunProgress | None = None,
                   desc: str = "eval") -> SplitEvaluation:
    """The metrics of one split. Sentences go by length (shortest first), counted on the run's progress line."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(derive(seed, "iw_draws"))
    n = len(split)
    mu_all = torch.zeros(n, model.nz, dtype=torch.float64)
    logvar_all = torch.zeros_like(mu_all)
    sums = {"kl": 0.0, "rec": 0.0, "nll": 0.0}
    per_sentence = {k: torch.zeros(n, dtype=torch.float64) for k in ("kl", "rec", "nll", "tokens", "words")}
    n_tokens = n_words = 0
    block = output_block(vocab_size, cfg.iw_max_elements)
    iw_samples = cfg.iw_samples if model.nz > 0 else 1  # no latent (a language model): log p(x) is exact at K = 1
    if progress is not None:
        progress.begin(desc)
    for batch in iterate_batches(split, framing, cfg.batch_size):
        n_tokens += int(batch.dec_mask.sum())
        n_words += int(batch.n_words.sum())
        batch = batch.to(device)
        mu, logvar = model.encode(batch)
        mu, logvar = mu.float(), logvar.float()
        z = sample_posterior(mu, logvar, generator=generator)
        values = {"kl": gaussian_kl(mu, logvar), "rec": -model.log_likelihood(batch, z, block=block),
                  "nll": iw_nll(model, batch, mu, logvar, iw_samples, block, generator)}
        rows = batch.index.cpu()
        for key, value in values.items():
            sums[key] += float(value.sum())
            per_sentence[key][rows] = value.double().cpu()
        per_sentence["tokens"][rows] = batch.dec_mask.sum(1).double().cpu()
        per_sentence["words"][rows] = batch.n_words.double().cpu()
        mu_all[batch.index.cpu()] = mu.double().cpu()
        logvar_all[batch.index.cpu()] = logvar.double().cpu()
        if progress is not None:
            progress.evaluated(batch.size, int(batch.dec_mask.sum()))

    pool = None if cfg.mi_pool == "dataset" else int(cfg.mi_pool)
    mi_mu, mi_logvar, block_sizes = mu_all, logvar_all, None
    if pool is not None and cfg.mi_pool_order == "length":  # blocks of M in length order (they cross lengths)
        order = torch.tensor(sorted(range(n), key=lambda i: (len(split.tokens[i]), i)), dtype=torch.long)
        mi_mu, mi_logvar = mu_all[order], logvar_all[order]
    elif pool is not None and cfg.mi_pool_order == "length_batches":  # He et al.'s batches: one length each
        batch_order, block_sizes = length_batches([len(t) for t in split.tokens], pool)
        order = torch.tensor(batch_order, dtype=torch.long)
        mi_mu, mi_logvar = mu_all[order], logvar_all[order]
    z_he = sample_posterior(mi_mu, mi_logvar, generator=torch.Generator().manual_seed(derive(seed, "mi_draws")))
    mi, pool_used = mutual_information(mi_mu, mi_logvar, z=z_he, pool_size=pool, block_sizes=block_sizes)
    if pool is not None and block_sizes is None:  # blocks of M (the last one shorter)
        block_sizes = [min(pool, n - start) for start in range(0, n, pool)]
    z_paired, own_paired = paired_draws(mi_mu, mi_logvar, cfg.mi_samples,
                                        torch.Generator().manual_seed(derive(seed, "mi_paired_draws")))
    mi_paired, _ = mutual_information_paired(mi_mu, mi_logvar, cfg.mi_samples, block_sizes=block_sizes,
                                             draws=(z_paired, own_paired))
    au, _ = active_units(mu_all, cfg.au_delta)
    bootstrap = {}
    if cfg.bootstrap > 0 and n > 1:  # standard errors of MI and AU: a bootstrap over sentences (metrics.uncertainty)
        nz = mi_mu.shape[1]
        neg_entropy = (-0.5 * nz * LOG_2PI - 0.5 * (1.0 + mi_logvar).sum(-1)).unsqueeze(1)
        for name, draws, own in (("mi", z_he.unsqueeze(1), neg_entropy), ("mi_paired", z_paired, own_paired)):
            resamples = torch.Generator().manual_seed(derive(seed, f"bootstrap_{name}"))
            values = bootstrap_mi(mi_mu, mi_logvar, draws, own, cfg.bootstrap, resamples, block_sizes=block_sizes)
            bootstrap[name] = float(values.std(unbiased=True))
        indices = bootstrap_indices(n, cfg.bootstrap, torch.Generator().manual_seed(derive(seed, "bootstrap_au")))
        bootstrap["au"] = float(bootstrap_au(mu_all, indices, cfg.au_delta).std(unbiased=True))
    stats = SplitStats(sentences=n, tokens=n_tokens, words=n_words, truncated=split.n_truncated,
                       kl_sum=sums["kl"], rec_sum=sums["rec"], nll_sum=sums["nll"], mi=mi, mi_paired=mi_paired,
                       mi_pool=pool_used, au=int(au), per_sentence=per_sentence, bootstrap_se=bootstrap)
    metrics = emitted(stats)  # every declared metric (ablate.metrics.schema), nothing else
    conventions = {"iw_samples": iw_samples, "mi_pool": pool_used, "au_delta": cfg.au_delta,
                   "token_unit": token_unit, "ppl_counts_eos": True, "ppl_counts_bos": False}
    return SplitEvaluation(metrics=metrics, mu=mu_all, logvar=logvar_all, conventions=conventions,
                           per_sentence=per_sentence)


def probe_features(mu: Tensor, logvar: Tensor, seed: int) -> Tensor:
    """One posterior sample z ~ q(z|x) per sentence (seeded): the probe's features.

    Probing the sample rather than μ measures what the decoder can read. In a collapsed posterior μ still varies
    by ~1e-4 across sentences while σ ≈ 1; a probe on standardised μ recovers that trace (e.g. length at 0.97
    with KL = 0.000), one on z sees noise and stays at the majority baseline.
    """
    return sample_posterior(mu, logvar, generator=torch.Generator().manual_seed(seed))


def probe_factors(train_z: Tensor, train_factors: dict[str, list[int]], eval_z: Tensor,
                  eval_factors: dict[str, list[int]], factor_classes: dict[str, int], seed: int) -> dict[str, float]:
    """Linear-probe accuracy of each ground-truth factor from the features (fit on train; posterior samples, see
    probe_features) and its majority baseline."""
    out = {}
    for name, classes in factor_classes.items():
        y_train = torch.tensor(train_factors[name])
        y_eval = torch.tensor(eval_factors[name])
        out[f"probe.{name}"] = linear_probe_accuracy(train_z.float(), y_train, eval_z.float(), y_eval, classes,
                                                     seed=seed)
        out[f"probe_majority.{name}"] = majority_baseline(y_train, y_eval)
    return out
