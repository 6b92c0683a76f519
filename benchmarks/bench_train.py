"""Training tokens/s and peak memory: ablate's training loop against a bare PyTorch loop of the same model.

    python benchmarks/bench_train.py [--sizes li_ptb,he_yahoo] [--repeats 3] [--threads 2]

Li et al.'s PTB LSTM VAE (emb 256, hidden 256/256, nz 32, batch 32, 10k vocabulary) and He et al.'s Yahoo size
(512/1024/1024, the Yahoo valid split standing in for train). The bare loop is written here the plain way: packed
sequences in the encoder, the full logits block, cross-entropy with padding masked out, Adam, clipping. It is
*not* the reference-speed baseline (packing and Adam make it slower than He et al.'s code): the speed claim
against the code researchers would otherwise run is bench_reference.py's, whose plain loop is shown there, side by
side with jxhe/vae-lagging-encoder itself, to run at its speed (0.96× on the AMD EPYC, 2026-12-02). This benchmark
is kept for the peak memory and the Yahoo size. Both
train on the same batches (ablate's bucketing, same seed), fp32; each run is its own process (so peak memory is
its own), interleaved bare/ablate, median of --repeats. Peak memory is the process's peak RSS minus its RSS
before the first step (the imports and the corpus are the same for both).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"li_ptb": ("ptb", "LI_PTB", 40), "he_yahoo": ("yahoo", "HE_YAHOO", 8)}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def one_run(impl: str, size: str, steps: int, threads: int, device_name: str = "cpu") -> dict:
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.nn.utils.rnn import pack_padded_sequence

    import common
    from ablate.core.config_reading import build_config
    from ablate.data.batching import iterate_batches
    from ablate.engine.run import build, prepare
    from ablate.engine.train import train

    torch.set_num_threads(threads)
    corpus, arch, _ = SIZES[size]
    config = build_config({"data": common.corpus_config(corpus, max_vocab=10_000 if corpus == "ptb" else 20_000),
                           "model": getattr(common, arch),
                           "train": {"batch_size": 32, "max_steps": steps, "device": device_name, "grad_clip": 5.0},
                           "eval": {"splits": []}, "seed": 0}, "<bench>")
    prepared = prepare(config)
    framing = prepared.tokenizer.framing
    train_split, valid_split = prepared.splits["train"], prepared.splits["valid"].head(8)
    before = rss_mb()
    if impl == "ablate":
        model = build(config, prepared)
        result = train(model, [], train_split, valid_split, framing, config.train, torch.device(device_name),
                       seed=0, progress=False)
        tokens, seconds = result.state.train_tokens, result.state.train_seconds
    else:
        batches = iterate_batches(train_split, framing, 32, random.Random(0))[:steps]  # what train() takes first
        cfg = config.model
        vocab = len(prepared.tokenizer)

        class BareVAE(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.enc_embed = nn.Embedding(vocab, cfg.emb_dim)
                self.enc_lstm = nn.LSTM(cfg.emb_dim, cfg.enc_hidden, batch_first=True)
                self.to_posterior = nn.Linear(cfg.enc_hidden, 2 * cfg.nz, bias=False)
                self.dec_embed = nn.Embedding(vocab, cfg.emb_dim)
                self.dec_lstm = nn.LSTM(cfg.emb_dim + cfg.nz, cfg.dec_hidden, batch_first=True)
                self.z_to_cell = nn.Linear(cfg.nz, cfg.dec_hidden, bias=False)
                self.out = nn.Linear(cfg.dec_hidden, vocab)
                self.drop_in, self.drop_out = nn.Dropout(cfg.dec_dropout_in), nn.Dropout(cfg.dec_dropout_out)
                for name, p in self.named_parameters():
                    bound = cfg.emb_init_uniform if "embed" in name else cfg.init_uniform
                    nn.init.uniform_(p, -bound, bound)

            def forward(self, b):
                packed = pack_padded_sequence(self.enc_embed(b.enc_ids), b.enc_mask.sum(1).cpu(), batch_first=True,
                                              enforce_sorted=False)
                _, (h, _) = self.enc_lstm(packed)
                mu, logvar = self.to_posterior(h[-1]).chunk(2, -1)
                z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
                emb = self.drop_in(self.dec_embed(b.dec_in))
                c0 = self.z_to_cell(z).unsqueeze(0)
                hidden, _ = self.dec_lstm(torch.cat([emb, z.unsqueeze(1).expand(-1, emb.shape[1], -1)], -1),
                                          (c0.tanh(), c0))
                logits = self.out(self.drop_out(hidden))
                nll = F.cross_entropy(logits.flatten(0, 1), b.dec_target.flatten(), reduction="none")
                rec = nll.view_as(b.dec_target).masked_fill(~b.dec_mask, 0).sum(1)
                kl = 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(1)
                return (rec + kl).mean(), kl.mean()

        torch.manual_seed(0)
        model = BareVAE().to(device_name).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        tokens = 0
        started = time.perf_counter()
        for batch in batches:
            tokens += int(batch.dec_mask.sum())
            batch = batch.to(device_name)
            loss, kl = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            float(loss), float(kl)  # logged every step, as a plain loop does
        seconds = time.perf_counter() - started
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device_name.startswith("cuda"):
        peak, before = torch.cuda.max_memory_allocated() / 2 ** 20, 0.0
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_mb": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="li_ptb,he_yahoo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (peak MB is then GPU memory)")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "SIZE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], args.one[1], int(args.one[2]), args.threads, args.device)))
        return
    from common import load

    print(f"training throughput, fp32, {args.device}, {args.threads} threads; {load()}")
    print(f"{'size':<10}{'impl':<8}{'tokens/s':>10}{'peak MB':>9}   runs (tokens/s)")
    for size in args.sizes.split(","):
        steps = SIZES[size][2]
        runs: dict[str, list[dict]] = {"bare": [], "ablate": []}
        for _ in range(args.repeats):
            for impl in ("bare", "ablate"):
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--device", args.device,
                                      "--one", impl, size,
                                      str(steps)], capture_output=True, text=True, cwd=Path(__file__).parent)
                if out.returncode:
                    raise SystemExit(out.stderr)
                runs[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {impl: statistics.median(r["tokens_per_s"] for r in rs) for impl, rs in runs.items()}
        for impl, rs in runs.items():
            print(f"{size:<10}{impl:<8}{med[impl]:>10.0f}{statistics.median(r['peak_mb'] for r in rs):>9.0f}   "
                  + ", ".join(f"{r['tokens_per_s']:.0f}" for r in rs))
        print(f"{size:<10}ablate / bare: {med['ablate'] / med['bare']:.2f}x tokens/s ({steps} steps per run); "
              + load())


if __name__ == "__main__":
    main()
