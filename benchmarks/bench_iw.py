"""Importance-weighted NLL (K = 500) on the first N PTB test sentences: ablate against a bare implementation.

    python benchmarks/bench_iw.py [--sentences 8] [--repeats 3] [--k 500] [--threads 2]

The bare implementation is the straightforward one (as the 2019 reference code does it): chunks of samples, the
decoder over the padded batch, the full logits block, log-softmax, padding masked out afterwards. Both run on the
same model (Li et al.'s PTB LSTM, random init: the cost does not depend on the weights) and the same draws,
interleaved, median of --repeats. The achieved rate counts the useful matrix work only (real positions: the
decoder LSTM's two products and the output layer per token) against the fp32 GEMM rate measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from common import gemm_rates, li_ptb_model, load
from ablate.data.batching import make_batch
from ablate.engine.evaluate import iw_nll
from ablate.metrics.estimators import iw_log_marginal, log_normal_diag, log_standard_normal, sample_posterior
from ablate.models.output_layer import output_block


@torch.no_grad()
def bare_iw_nll(model, batch, mu, logvar, k: int, generator, max_logits: int = 8_000_000) -> torch.Tensor:
    """Chunks of samples, full logits over the padded length, log-softmax, mask (the straightforward way)."""
    b, t = batch.dec_in.shape
    vocab = model.decoder.out.out_features
    chunk = max(1, min(k, max_logits // (b * t * vocab)))
    parts = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        z = sample_posterior(mu, logvar, k=n, generator=generator)
        logits, _ = model.decoder(batch.dec_in.repeat_interleave(n, 0), z.reshape(-1, model.nz))
        logp = -F.cross_entropy(logits.flatten(0, 1), batch.dec_target.repeat_interleave(n, 0).flatten(),
                                reduction="none").view(b * n, t)
        log_px = logp.masked_fill(~batch.dec_mask.repeat_interleave(n, 0), 0.0).sum(-1).view(b, n)
        parts.append((log_px, log_standard_normal(z), log_normal_diag(z, mu.unsqueeze(1), logvar.unsqueeze(1))))
    log_px, log_pz, log_qz = (torch.cat(p, dim=1) for p in zip(*parts))
    return -iw_log_marginal(log_px, log_pz, log_qz)


def useful_flops(model, batch, k: int) -> float:
    cfg = model.cfg
    vocab = model.decoder.out.out_features
    per_token = 2 * 4 * cfg.dec_hidden * (cfg.emb_dim + cfg.nz + cfg.dec_hidden) + 2 * cfg.dec_hidden * vocab
    return float(batch.dec_mask.sum()) * k * per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, prepared, model = li_ptb_model()
    split = prepared.splits["test"]
    batch = make_batch(split, list(range(args.sentences)), prepared.tokenizer.framing)  # split order: mixed lengths
    with torch.no_grad():
        mu, logvar = model.encode(batch)
    block = output_block(len(prepared.tokenizer), config.eval.iw_max_elements)
    flops = useful_flops(model, batch, args.k)
    n_tokens = int(batch.dec_mask.sum())

    def run(which: str) -> tuple[float, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = (iw_nll(model, batch, mu, logvar, args.k, block, gen) if which == "ablate"
                   else bare_iw_nll(model, batch, mu, logvar, args.k, gen))
        return time.perf_counter() - t0, out

    times: dict[str, list[float]] = {"ablate": [], "bare": []}
    gemm: list[dict[str, float]] = []
    estimates = {}
    print(f"IW-NLL K={args.k}, first {args.sentences} PTB test sentences ({n_tokens} tokens, lengths "
          f"{batch.dec_mask.sum(1).tolist()}), Li et al.'s LSTM, {args.threads} threads; {load()}")
    for _ in range(args.repeats):
        gemm.append(gemm_rates())
        for which in ("bare", "ablate"):
            seconds, estimates[which] = run(which)
            times[which].append(seconds)
    rates = {name: statistics.median(g[name] for g in gemm) for name in gemm[0]}
    rate = max(rates.values())
    print("fp32 GEMM rate (2048², median of {}): {}; the better one is the reference".format(
        len(gemm), ", ".join(f"{name} {value:.1f} GFLOP/s" for name, value in rates.items())))
    print(f"{'implementation':<16}{'s/sentence':>12}{'ms/token':>10}{'GFLOP/s':>10}{'% of GEMM':>11}   runs (s)")
    for which in ("bare", "ablate"):
        seconds = statistics.median(times[which])
        achieved = flops / seconds / 1e9
        print(f"{which:<16}{seconds / args.sentences:>12.2f}{1000 * seconds / n_tokens:>10.2f}{achieved:>10.1f}"
              f"{100 * achieved / rate:>10.0f}%   " + ", ".join(f"{t:.1f}" for t in times[which]))
    print(f"speed-up ablate / bare: {statistics.median(times['bare']) / statistics.median(times['ablate']):.2f}x; "
          f"mean NLL ablate {float(estimates['ablate'].mean()):.3f} bare {float(estimates['bare'].mean()):.3f} "
          "(the same generator drawn in other chunks: equal within sampling noise); " + load())


if __name__ == "__main__":
    main()
