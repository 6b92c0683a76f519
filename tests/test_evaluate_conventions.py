"""Evaluation conventions recorded in each row: He et al.'s MI pools and batches (against a transcription of their
code), and every metric's standard error."""

from __future__ import annotations

import statistics

import torch

from ablate.core.config import EvalConfig
from ablate.engine.evaluate import evaluate_split
from ablate.metrics.estimators import mutual_information
from ablate.engine.run import mi_pool_kind
from test_fast_paths import setup


def test_length_ordered_mi_pools_are_blocks_of_the_length_sorted_split():
    vocab, model, split = setup()
    cfg = EvalConfig(iw_samples=2, mi_pool=3, mi_pool_order="length", batch_size=4)
    ev = evaluate_split(model, split, vocab.framing, len(vocab), cfg, torch.device("cpu"), seed=5, token_unit="word")
    order = sorted(range(len(split)), key=lambda i: (len(split.tokens[i]), i))
    expected, m = mutual_information(ev.mu[order], ev.logvar[order], pool_size=3,
                                     generator=torch.Generator().manual_seed(6))
    assert ev.metrics["mi"] == expected and m == 3
    in_split_order = evaluate_split(model, split, vocab.framing, len(vocab), EvalConfig(
        iw_samples=2, mi_pool=3, batch_size=4), torch.device("cpu"), seed=5, token_unit="word").metrics["mi"]
    assert in_split_order != expected  # the grouping matters (the sentences here are of mixed lengths)
    assert mi_pool_kind(cfg) == "length_block"
    assert mi_pool_kind(EvalConfig(mi_pool=3)) == "block" and mi_pool_kind(EvalConfig()) == "dataset"


# --- He et al. 2019's MI over their batches: a transcription of vae-lagging-encoder (commit cdc4eb9) -------------

def _he_create_data_batch(lengths: list[int], batch_size: int) -> list[list[int]]:
    """data/text_data.py create_data_batch: sort by length, cut at every change of length and every batch_size
    items (their np.argsort, made stable here so that ties fall as ours do)."""
    import numpy as np

    sents_len = np.array(lengths)
    sort_idx = np.argsort(sents_len, kind="stable")
    sort_len = sents_len[sort_idx]
    change_loc = [i for i in range(1, len(sort_len)) if sort_len[i] != sort_len[i - 1]] + [len(sort_len)]
    batches, curr = [], 0
    for idx in change_loc:
        while curr < idx:
            nxt = min(curr + batch_size, idx)
            batches.append([int(sort_idx[i]) for i in range(curr, nxt)])
            curr = nxt
    return batches


def _he_calc_mi(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, batches: list[list[int]]) -> float:
    """text.py calc_mi (batch-size-weighted mean) over modules/encoders/encoder.py calc_mi (one batch)."""
    import math

    mi, num_examples = 0.0, 0
    for batch in batches:
        m, lv, zs = mu[batch], logvar[batch], z[batch].unsqueeze(1)  # z_samples [x_batch, 1, nz]
        x_batch, nz = m.size()
        neg_entropy = (-0.5 * nz * math.log(2 * math.pi) - 0.5 * (1 + lv).sum(-1)).mean()
        m, lv = m.unsqueeze(0), lv.unsqueeze(0)
        dev = zs - m
        log_density = -0.5 * ((dev ** 2) / lv.exp()).sum(dim=-1) - 0.5 * (nz * math.log(2 * math.pi) + lv.sum(-1))
        log_qz = torch.logsumexp(log_density, dim=1) - math.log(x_batch)
        mi += (neg_entropy - log_qz.mean(-1)).item() * x_batch
        num_examples += x_batch
    return mi / num_examples


def test_length_batches_are_he_et_al_s_batches():
    from ablate.metrics.estimators import length_batches

    order, sizes = length_batches([3, 1, 3, 2, 3, 3], 2)  # hand-worked: lengths 1 | 2 | 3 3 | 3 3
    assert order == [1, 3, 0, 2, 4, 5] and sizes == [1, 1, 2, 2]
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 15, (300,), generator=gen).tolist()
    order, sizes = length_batches(lengths, 32)
    batches = _he_create_data_batch(lengths, 32)
    assert [len(b) for b in batches] == sizes and [i for b in batches for i in b] == order


def test_mi_by_length_batches_matches_he_et_al_s_calc_mi():
    from ablate.metrics.estimators import length_batches

    gen = torch.Generator().manual_seed(1)
    n, nz = 300, 8
    lengths = torch.randint(1, 15, (n,), generator=gen).tolist()
    # an informative posterior: the means spread far beyond the posterior widths (MI well above zero)
    mu = (2.0 * torch.randn(n, nz, generator=gen)).double()
    logvar = (torch.randn(n, nz, generator=gen) * 0.3 - 2.0).double()
    z = mu + (0.5 * logvar).exp() * torch.randn(n, nz, generator=gen).double()
    order, sizes = length_batches(lengths, 32)
    ours, m = mutual_information(mu[order], logvar[order], z=z[order], block_sizes=sizes)
    theirs = _he_calc_mi(mu, logvar, z, _he_create_data_batch(lengths, 32))
    assert abs(ours - theirs) < 1e-9 and m == max(sizes)
    # the old length_block pools (blocks of 32 across length boundaries) give a different number on the same draws
    blocks, _ = mutual_information(mu[order], logvar[order], z=z[order], pool_size=32)
    assert abs(blocks - theirs) > 0.1


def test_evaluation_with_length_batches_uses_he_et_al_s_batches():
    from ablate.metrics.estimators import length_batches

    vocab, model, split = setup()
    cfg = EvalConfig(iw_samples=2, mi_pool=3, mi_pool_order="length_batches", batch_size=4)
    ev = evaluate_split(model, split, vocab.framing, len(vocab), cfg, torch.device("cpu"), seed=5, token_unit="word")
    order, sizes = length_batches([len(t) for t in split.tokens], 3)
    expected, _ = mutual_information(ev.mu[order], ev.logvar[order], pool_size=3, block_sizes=sizes,
                                     generator=torch.Generator().manual_seed(6))
    assert ev.metrics["mi"] == expected
    assert mi_pool_kind(cfg) == "length_batch"


def test_one_length_training_batches_are_he_et_al_s_batches():
    import random

    from ablate.data.batching import one_length_order

    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(1, 20, (500,), generator=gen).tolist()
    fixed = one_length_order(lengths, 32, None)
    assert fixed == _he_create_data_batch(lengths, 32)
    shuffled = one_length_order(lengths, 32, random.Random(0))
    assert shuffled != fixed and sorted(map(tuple, shuffled)) == sorted(map(tuple, fixed))
    assert all(len({lengths[i] for i in batch}) == 1 and 1 <= len(batch) <= 32 for batch in shuffled)


def test_batches_per_epoch_counts_the_batches_an_epoch_cuts():
    """The progress line's plan: one-length batches are more than ⌈N / B⌉ (PTB train: 1,359 against 1,315)."""
    import random

    from ablate.data.batching import EncodedSplit, batches_per_epoch, iterate_batches

    vocab, _, _ = setup()
    gen = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 20, (301,), generator=gen).tolist()
    split = EncodedSplit([[4] * n for n in lengths], [n + 1 for n in lengths])
    for one_length in (False, True):
        cut = iterate_batches(split, vocab.framing, 32, random.Random(1), one_length=one_length)
        assert batches_per_epoch(split, 32, one_length) == len(cut)
    assert batches_per_epoch(split, 32, True) > batches_per_epoch(split, 32) == 10


def test_every_metric_carries_its_standard_error():
    import math

    from ablate.metrics.uncertainty import bootstrap_au, bootstrap_indices, exp_ratio_se

    vocab, model, split = setup()
    cfg = EvalConfig(iw_samples=3, batch_size=4, bootstrap=30)
    ev = evaluate_split(model, split, vocab.framing, len(vocab), cfg, torch.device("cpu"), seed=5, token_unit="word")
    per, m, n = ev.per_sentence, ev.metrics, len(split)
    for name, values in (("nll", per["nll"]), ("rec", per["rec"]), ("kl", per["kl"]),
                         ("nelbo", per["rec"] + per["kl"])):
        assert abs(float(values.mean()) - m[name]) < 1e-5  # the metric sums float32 batches
        assert abs(m[f"{name}_se"] - statistics.stdev(values.tolist()) / math.sqrt(n)) < 1e-9
    assert per["tokens"].sum() == m["n_tokens"] and per["words"].sum() == m["n_words"]
    assert m["ppl_se"] == exp_ratio_se(per["nll"], per["tokens"])
    assert m["ppl_word_se"] == exp_ratio_se(per["nll"], per["words"])
    indices = bootstrap_indices(n, 30, torch.Generator().manual_seed(5 + 6))
    assert m["au_se"] == float(bootstrap_au(ev.mu, indices, cfg.au_delta).std())
    assert m["mi_se"] > 0 and m["mi_paired_se"] > 0
    none = evaluate_split(model, split, vocab.framing, len(vocab), EvalConfig(iw_samples=3, bootstrap=0),
                          torch.device("cpu"), seed=5, token_unit="word").metrics
    assert math.isnan(none["mi_se"]) and math.isnan(none["au_se"]) and none["nll_se"] > 0
