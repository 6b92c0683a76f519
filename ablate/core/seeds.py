"""Every random stream a run draws from, derived from a seed by name: one table, so the derivations read side by side
and a new stream is one line (no offsets scattered over the code).

A stream's seed is `seed × multiplier + offset + index`; the index numbers the draws of a stream that recurs (the
epoch of a batch order, the global step of an inner loop, a split's position). The table reproduces the seeds ablate
has always used, so results stay bit-identical; it also shows where two streams meet — a split's evaluation seed
(`split_evaluation`, index i) equals the MI draw seed of the split before it (`mi_draws` of index i − 1), both
Gaussian draws for different sums, so they are not independent across splits; left as it is so rows stay comparable.
"""

from __future__ import annotations

# name: (multiplier, offset, what draws from it)
STREAMS: dict[str, tuple[int, int, str]] = {
    # from the run's seed
    "batch_order": (100_003, 0, "the shuffled order of one epoch's batches (index: epoch)"),
    "inner_batches": (1_000_003, 0, "the batches aggressive training's inner loop draws (index: global step)"),
    "corruptions": (1, 7919, "denoising's word drops"),
    "aggressive_mi": (7, 0, "aggressive training's validation MI draws (index: MI checks so far)"),
    "split_evaluation": (1000, 0, "one evaluated split (index: its place in eval.splits); the streams below"),
    "probe_train_features": (1000, 999, "the probe's train features, z ~ q(z|x)"),
    "probe_eval_features": (1000, 998, "the probe's features of an evaluated split (index: minus its place)"),
    # from a split's evaluation seed (split_evaluation)
    "iw_draws": (1, 0, "importance samples of the IW NLL and the one-sample −ELBO"),
    "mi_draws": (1, 1, "He et al.'s MI: one z per sentence"),
    "mi_paired_draws": (1, 2, "the paired MI: S draws per sentence"),
    "bootstrap_mi": (1, 4, "the bootstrap resamples of He et al.'s MI"),
    "bootstrap_mi_paired": (1, 5, "the bootstrap resamples of the paired MI"),
    "bootstrap_au": (1, 6, "the bootstrap resamples of AU"),
    # from a search arm's sampler seed
    "search_sampler": (1_000_003, 0, "an Optuna sampler of a search arm (index: cell seed × 10,007 + trial)"),
}


def derive(seed: int, stream: str, index: int = 0) -> int:
    """The seed of a named stream (STREAMS) drawn from `seed`."""
    multiplier, offset, _ = STREAMS[stream]
    return seed * multiplier + offset + index
