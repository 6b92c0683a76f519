"""Evaluation conventions recorded in each row: He et al.'s MI pools (blocks of sentences in length order)."""

from __future__ import annotations

import torch

from ablate.config import EvalConfig
from ablate.evaluate import evaluate_split
from ablate.metrics import mutual_information
from ablate.run import mi_pool_kind
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
