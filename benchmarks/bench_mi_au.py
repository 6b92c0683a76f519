"""MI and AU over the PTB test set: the encoder pass plus the two estimators, against the packed-sequence encoder.

    python benchmarks/bench_mi_au.py [--repeats 5] [--threads 2]

Li et al.'s PTB LSTM (random init: the cost does not depend on the weights), eval batches of 64 sorted by length,
MI with the aggregate posterior over the whole split (M = 3761) and AU (Burda et al. 2016), median of --repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from common import li_ptb_model, load
from ablate.data.batching import iterate_batches
from ablate.engine.evaluate import encode_all
from ablate.metrics.estimators import active_units, mutual_information


@torch.no_grad()
def packed_encode_all(model, split, framing, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward variable-length encoder: packed sequences (PyTorch's unfused LSTM path)."""
    enc = model.encoder
    mu = torch.zeros(len(split), model.nz, dtype=torch.float64)
    logvar = torch.zeros_like(mu)
    for batch in iterate_batches(split, framing, batch_size):
        packed = pack_padded_sequence(enc.embed(batch.enc_ids), batch.enc_mask.sum(1), batch_first=True,
                                      enforce_sorted=False)
        _, (h, _) = enc.lstm(packed)
        m, lv = enc.to_posterior(h[-1]).chunk(2, -1)
        mu[batch.index], logvar[batch.index] = m.double(), lv.double()
    return mu, logvar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, prepared, model = li_ptb_model()
    split, framing = prepared.splits["test"], prepared.tokenizer.framing

    def timed(encoder) -> dict[str, float]:
        t0 = time.perf_counter()
        mu, logvar = encoder()
        t1 = time.perf_counter()
        mutual_information(mu, logvar, generator=torch.Generator().manual_seed(0))
        active_units(mu)
        return {"encode": t1 - t0, "total": time.perf_counter() - t0}

    runs: dict[str, list[dict[str, float]]] = {"packed": [], "ablate": []}
    for _ in range(args.repeats):
        runs["packed"].append(timed(lambda: packed_encode_all(model, split, framing, 64)))
        runs["ablate"].append(timed(lambda: encode_all(model, split, framing, 64, torch.device("cpu"))))
    print(f"MI + AU over the PTB test set ({len(split)} sentences), {args.threads} threads; {load()}")
    print(f"{'encoder':<10}{'encode s':>10}{'MI+AU s':>10}{'total s':>10}")
    for name, rs in runs.items():
        enc = statistics.median(r["encode"] for r in rs)
        tot = statistics.median(r["total"] for r in rs)
        print(f"{name:<10}{enc:>10.3f}{tot - enc:>10.3f}{tot:>10.3f}")
    ratio = statistics.median(r["total"] for r in runs["packed"]) / statistics.median(r["total"] for r in runs["ablate"])
    print(f"speed-up: {ratio:.2f}x; {load()}")


if __name__ == "__main__":
    main()
