"""Named random streams (ablate/core/seeds.py) give the seeds the code used before they were named (rows stay
bit-identical), written out by hand."""

from __future__ import annotations

import pytest

from ablate.core.seeds import STREAMS, derive


@pytest.mark.parametrize("seed", [0, 3, 2**31 - 1])
def test_each_stream_is_the_derivation_it_replaced(seed):
    assert derive(seed, "batch_order", 4) == seed * 100_003 + 4
    assert derive(seed, "inner_batches", 17) == seed * 1_000_003 + 17
    assert derive(seed, "corruptions") == seed + 7919
    assert derive(seed, "aggressive_mi", 2) == seed * 7 + 2
    split = derive(seed, "split_evaluation", 1)
    assert split == seed * 1000 + 1
    assert derive(seed, "probe_train_features") == seed * 1000 + 999
    assert derive(seed, "probe_eval_features", -1) == seed * 1000 + 997
    streams = ("iw_draws", "mi_draws", "mi_paired_draws", "bootstrap_mi", "bootstrap_mi_paired", "bootstrap_au")
    assert [derive(split, s) for s in streams] == [split + k for k in (0, 1, 2, 4, 5, 6)]
    assert derive(seed, "search_sampler", 5 * 10_007 + 3) == seed * 1_000_003 + 5 * 10_007 + 3


def test_every_stream_says_what_draws_from_it_and_an_unknown_name_is_refused():
    assert all(len(entry) == 3 and entry[2] for entry in STREAMS.values())
    with pytest.raises(KeyError):
        derive(0, "no_such_stream")
