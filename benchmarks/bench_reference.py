"""Training speed against He et al.'s own code: the reference, a plain PyTorch loop, and ablate, side by side.

    git clone https://github.com/jxhe/vae-lagging-encoder /tmp/lagging      # a scratch copy; never vendored
    python benchmarks/bench_reference.py --reference /tmp/lagging [--steps 30,230] [--repeats 3] [--threads 2]

Li et al.'s PTB configuration (emb 256, hidden 256/256, nz 32, batch 32, dropout 0.5/0.5, SGD lr 1, clip 5, no
output bias), fp32, on ../shared/data/ptb's training split. Three implementations, each run in its own process:

- `reference`: jxhe/vae-lagging-encoder's modules (LSTMEncoder, LSTMDecoder, VAE, MonoTextData) driven by the body
  of its text.py training loop (create_data_batch's one-length batches in a shuffled order, two SGD optimisers,
  `loss.mean().backward()`, clipping, `.item()` of the losses every step). Imported from --reference at run time.
- `bare`: the same algorithm written here in plain PyTorch (nn.LSTM over one-length batches, the full logits
  block, cross-entropy, SGD, a host read of the loss each step) — shown here to run at the reference's speed:
  5,811 vs 6,056 tokens/s (0.96×; medians of 3, interleaved) on an AMD EPYC, 2 cores, torch 2.13.0+cpu,
  2026-12-02, and 6,189 vs 5,707 (1.08×) on an AMD EPYC of family 26, model 2 (Zen 5), 2026-12-03
  (benchmarks/README.md has the whole tables).
- `ablate`: `ablate.engine.train.train` with the same settings (`train.batching: one_length`, the same batches).

Steady-state tokens/s by differencing: each implementation runs the first A and the first B steps of the same
shuffled batch order (same seed), and (tokens_B − tokens_A) / (seconds_B − seconds_A) leaves out start-up and
warm-up. Tokens are target tokens ((length − 1) × batch, He et al.'s count). Runs are interleaved
reference/bare/ablate, --repeats times; the figure is the median, with the CPU model and the CPU pressure beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import common

LI = {"ni": 256, "enc_nh": 256, "dec_nh": 256, "nz": 32, "dec_dropout_in": 0.5, "dec_dropout_out": 0.5}
IMPLS = ("reference", "bare", "ablate")
TRAINING_TARGET = 1.5  # issue 24: ablate's training ≥ 1.5× the reference's tokens/s (Li PTB, SGD, fp32)
IW_TARGET = 2.0  # issue 24: IW-NLL with K = 500 ≥ 2× the reference's speed


def one_length_batches(sentences: list[list[int]], batch_size: int, seed: int) -> list[list[list[int]]]:
    """He et al.'s create_data_batch (data/text_data.py): sort by length, cut each run of one length into batches
    of at most batch_size, then (text.py) visit them in np.random.permutation order."""
    import numpy as np

    order = np.argsort([len(s) for s in sentences], kind="stable")
    batches, current = [], []
    for index in order:
        if current and (len(current) == batch_size or len(sentences[index]) != len(current[0])):
            batches.append(current)
            current = []
        current.append(sentences[index])
    batches.append(current)
    rng = np.random.RandomState(seed)
    return [batches[i] for i in rng.permutation(len(batches))]


def run_reference(path: Path, steps: int, threads: int) -> dict:
    import numpy as np
    import torch
    from torch import nn

    sys.path.insert(0, str(path))
    from data import MonoTextData  # noqa: E402  (their package, from --reference)
    from modules import VAE, LSTMDecoder, LSTMEncoder  # noqa: E402

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train_data = MonoTextData(str(common.SHARED / "ptb" / "ptb.train.txt"), label=False)
    args = SimpleNamespace(**LI, device=torch.device("cpu"), dec_type="lstm", enc_type="lstm")

    def model_init(tensor):
        nn.init.uniform_(tensor, -0.01, 0.01)

    def emb_init(tensor):
        nn.init.uniform_(tensor, -0.1, 0.1)

    vae = VAE(LSTMEncoder(args, len(train_data.vocab), model_init, emb_init),
              LSTMDecoder(args, train_data.vocab, model_init, emb_init), args)
    enc_optimizer = torch.optim.SGD(vae.encoder.parameters(), lr=1.0, momentum=0)
    dec_optimizer = torch.optim.SGD(vae.decoder.parameters(), lr=1.0, momentum=0)
    batches = train_data.create_data_batch(batch_size=32, device=args.device, batch_first=True)
    order = np.random.RandomState(0).permutation(len(batches))[:steps]
    vae.train()
    tokens, report = 0, 0.0
    started = time.perf_counter()
    for i in order:  # text.py's loop body, aggressive_flag False, kl_weight 1
        batch_data = batches[i]
        batch_size, sent_len = batch_data.size()
        tokens += (sent_len - 1) * batch_size
        enc_optimizer.zero_grad()
        dec_optimizer.zero_grad()
        loss, loss_rc, loss_kl = vae.loss(batch_data, 1.0, nsamples=1)
        loss = loss.mean(dim=-1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
        enc_optimizer.step()
        dec_optimizer.step()
        report += loss_rc.sum().item() + loss_kl.sum().item()
    return {"tokens": tokens, "seconds": time.perf_counter() - started}


def run_bare(steps: int, threads: int) -> dict:
    """A plain PyTorch loop of the same model and algorithm (the baseline of bench_train.py)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    words: dict[str, int] = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    sentences = []
    for line in (common.SHARED / "ptb" / "ptb.train.txt").read_text().splitlines():
        if line.split():
            sentences.append([1] + [words.setdefault(w, len(words)) for w in line.split()] + [2])
    vocab = len(words)
    batches = [torch.tensor(b) for b in one_length_batches(sentences, 32, seed=0)[:steps]]

    class BareVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc_embed = nn.Embedding(vocab, LI["ni"])
            self.enc_lstm = nn.LSTM(LI["ni"], LI["enc_nh"], batch_first=True)
            self.to_posterior = nn.Linear(LI["enc_nh"], 2 * LI["nz"], bias=False)
            self.dec_embed = nn.Embedding(vocab, LI["ni"])
            self.dec_lstm = nn.LSTM(LI["ni"] + LI["nz"], LI["dec_nh"], batch_first=True)
            self.z_to_cell = nn.Linear(LI["nz"], LI["dec_nh"], bias=False)
            self.out = nn.Linear(LI["dec_nh"], vocab, bias=False)
            self.drop_in, self.drop_out = nn.Dropout(LI["dec_dropout_in"]), nn.Dropout(LI["dec_dropout_out"])
            for name, p in self.named_parameters():
                nn.init.uniform_(p, -0.1, 0.1) if "embed" in name else nn.init.uniform_(p, -0.01, 0.01)

        def forward(self, x):
            _, (h, _) = self.enc_lstm(self.enc_embed(x))  # one length: no packing, no padding
            mu, logvar = self.to_posterior(h[-1]).chunk(2, -1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            src, tgt = x[:, :-1], x[:, 1:]
            emb = self.drop_in(self.dec_embed(src))
            c0 = self.z_to_cell(z).unsqueeze(0)
            hidden, _ = self.dec_lstm(torch.cat([emb, z.unsqueeze(1).expand(-1, emb.shape[1], -1)], -1),
                                      (c0.tanh(), c0))
            logits = self.out(self.drop_out(hidden))
            rec = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none").view_as(tgt).sum(1)
            kl = 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(1)
            return (rec + kl).mean(), rec.sum(), kl.sum()

    model = BareVAE().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    tokens, report = 0, 0.0
    started = time.perf_counter()
    for x in batches:
        tokens += (x.shape[1] - 1) * x.shape[0]
        optimizer.zero_grad()
        loss, rec, kl = model(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        report += rec.item() + kl.item()
    return {"tokens": tokens, "seconds": time.perf_counter() - started}


def run_ablate(steps: int, threads: int, precision: str = "fp32") -> dict:
    """ablate's trainer, with the kernels it would choose in `ablate run` (timed once, then from the user cache);
    a --before tree (an older ablate on PYTHONPATH) may not choose kernels."""
    import torch

    import ablate.engine.run
    from ablate.core.config_reading import build_config
    from ablate.engine.run import build, prepare
    from ablate.engine.train import train

    torch.set_num_threads(threads)
    config = build_config({
        "data": common.corpus_config("ptb"),
        "model": {**common.LI_PTB, "dec_dropout_in": 0.5, "dec_dropout_out": 0.5, "output_bias": False},
        "train": {"optimizer": "sgd", "lr": 1.0, "batch_size": 32, "max_steps": steps, "device": "cpu",
                  "grad_clip": 5.0, "batching": "one_length", "precision": precision},
        "eval": {"splits": []}, "seed": 0}, "<bench>")
    prepared = prepare(config)
    model = build(config, prepared)
    kernels = "(none: before kernels were chosen)"
    if hasattr(ablate.engine.run, "choose_kernels"):
        chosen = ablate.engine.run.choose_kernels(model, config, prepared, torch.device("cpu"))
        ablate.engine.run.use_kernels(chosen)
        kernels = chosen.describe()
    result = train(model, [], prepared.splits["train"], prepared.splits["valid"].head(8),
                   prepared.tokenizer.framing, config.train, torch.device("cpu"), seed=0, progress=False)
    return {"tokens": result.state.train_tokens, "seconds": result.state.train_seconds, "kernels": kernels}


def iw_reference(path: Path, sentences: int, k: int, threads: int) -> dict:
    """text.py's calc_iwnll on the first `sentences` test sentences: batches of one sentence, nll_iw(ns=100)."""
    import torch
    from torch import nn

    sys.path.insert(0, str(path))
    from data import MonoTextData  # noqa: E402
    from modules import VAE, LSTMDecoder, LSTMEncoder  # noqa: E402

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train_data = MonoTextData(str(common.SHARED / "ptb" / "ptb.train.txt"), label=False)
    test_data = MonoTextData(str(common.SHARED / "ptb" / "ptb.test.txt"), label=False, vocab=train_data.vocab)
    test_data.data = test_data.data[:sentences]
    args = SimpleNamespace(**LI, device=torch.device("cpu"), dec_type="lstm", enc_type="lstm")
    init = (lambda t: nn.init.uniform_(t, -0.01, 0.01), lambda t: nn.init.uniform_(t, -0.1, 0.1))
    vae = VAE(LSTMEncoder(args, len(train_data.vocab), *init), LSTMDecoder(args, train_data.vocab, *init), args)
    vae.eval()
    batches = test_data.create_data_batch(batch_size=1, device=args.device, batch_first=True)
    started = time.perf_counter()
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            total += vae.nll_iw(batch, nsamples=k, ns=100).sum().item()
    return {"seconds": time.perf_counter() - started, "sentences": len(batches)}


def iw_ablate(sentences: int, k: int, threads: int) -> dict:
    """ablate's evaluation path (iw_nll over eval batches of 32, sorted by length as evaluate_split does)."""
    import torch

    import ablate.engine.run
    from ablate.data.batching import make_batch
    from ablate.engine.evaluate import iw_nll
    try:
        from ablate.models.output_layer import output_block
    except ImportError:  # a --before tree: it lived in models.base
        from ablate.models.base import output_block

    torch.set_num_threads(threads)
    config, prepared, model = common.li_ptb_model()
    kernels = "(none: before kernels were chosen)"
    if hasattr(ablate.engine.run, "choose_kernels"):
        chosen = ablate.engine.run.choose_kernels(model, config, prepared, torch.device("cpu"))
        ablate.engine.run.use_kernels(chosen)
        kernels = chosen.describe()
    split = prepared.splits["test"]
    order = sorted(range(sentences), key=lambda i: len(split.tokens[i]))
    batches = [make_batch(split, order[i: i + 32], prepared.tokenizer.framing) for i in range(0, sentences, 32)]
    block = output_block(len(prepared.tokenizer), config.eval.iw_max_elements)
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            mu, logvar = model.encode(batch)
            iw_nll(model, batch, mu, logvar, k, block, gen)
    return {"seconds": time.perf_counter() - started, "sentences": sentences, "kernels": kernels}


def one(impl: str, steps: int, threads: int, reference: Path | None) -> dict:
    if impl.startswith("iw-"):  # steps: the number of test sentences; K = 500
        return iw_reference(reference, steps, 500, threads) if impl == "iw-reference" else \
            iw_ablate(steps, 500, threads)
    if impl == "reference":
        return run_reference(reference, steps, threads)
    if impl == "bare":
        return run_bare(steps, threads)
    return run_ablate(steps, threads, "bf16" if impl == "ablate-bf16" else "fp32")  # ablate, before, ablate-bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="a checkout of jxhe/vae-lagging-encoder (without it: bare "
                        "and ablate only)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="of reference, bare, ablate, ablate-bf16, before")
    parser.add_argument("--before", type=Path, help="an older checkout of ablate (git worktree add): its trainer "
                        "runs as impl `before`, interleaved with the rest")
    parser.add_argument("--steps", default="30,230", help="A,B: steady state from the difference of the two runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iw", type=int, default=0, metavar="N", help="instead: IW-NLL with K = 500 on the first N "
                        "PTB test sentences (reference: text.py's calc_iwnll, one sentence per batch)")
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.threads, args.reference)))
        return
    parser_iw = args.iw
    impls = [i for i in args.impls.split(",") if (i != "reference" or args.reference) and (i != "before" or args.before)]
    if parser_iw:
        return iw_main(args, [i for i in impls if i in ("reference", "ablate", "before")])
    short, long = (int(s) for s in args.steps.split(","))
    print(f"training tokens/s, Li et al.'s PTB config, SGD, fp32, {args.threads} threads; {common.cpu_model()}")
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    for repeat in range(args.repeats):
        for impl in impls:
            runs = {}
            for steps in (short, long):
                runs[steps] = run_in_process(args, impl, impl, steps)
            rate = (runs[long]["tokens"] - runs[short]["tokens"]) / (runs[long]["seconds"] - runs[short]["seconds"])
            rates[impl].append(rate)
            chosen = f" [{runs[long]['kernels']}]" if repeat == 0 and "kernels" in runs[long] else ""
            print(f"  repeat {repeat + 1} {impl:<12}{rate:>8.0f} tokens/s (steps {short}→{long}); {common.load()}"
                  + chosen, flush=True)
    medians = {impl: statistics.median(r) for impl, r in rates.items()}
    print(f"{'impl':<12}{'tokens/s':>10}   runs")
    for impl in impls:
        print(f"{impl:<12}{medians[impl]:>10.0f}   " + ", ".join(f"{r:.0f}" for r in rates[impl]))
    base_name = "reference" if "reference" in medians else impls[0]
    for impl in impls:
        ratio = medians[impl] / medians[base_name]
        shown = common.beside_target(ratio, TRAINING_TARGET) if (impl, base_name) == ("ablate", "reference") \
            else f"{ratio:.2f}x"
        print(f"{impl} / {base_name}: {shown}")
    print(common.load())


def run_in_process(args: argparse.Namespace, impl: str, one: str, size: int) -> dict:
    """`--one ONE SIZE` in a fresh Python process (an older checkout on PYTHONPATH for impl `before`); its JSON."""
    command = [sys.executable, __file__, "--threads", str(args.threads), "--one", one, str(size)]
    if args.reference:
        command += ["--reference", str(args.reference)]
    env = dict(os.environ)
    if impl == "before":
        env["PYTHONPATH"] = str(args.before.resolve())
    out = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent, env=env)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def iw_main(args: argparse.Namespace, impls: list[str]) -> None:
    print(f"IW-NLL K = 500, first {args.iw} PTB test sentences, {args.threads} threads; {common.cpu_model()}")
    seconds: dict[str, list[float]] = {impl: [] for impl in impls}
    for repeat in range(args.repeats):
        for impl in impls:
            run = run_in_process(args, impl, f"iw-{impl}", args.iw)
            seconds[impl].append(run["seconds"])
            chosen = f" [{run['kernels']}]" if repeat == 0 and "kernels" in run else ""
            print(f"  repeat {repeat + 1} {impl:<12}{run['seconds']:>8.1f} s; {common.load()}{chosen}", flush=True)
    medians = {impl: statistics.median(v) for impl, v in seconds.items()}
    base = medians.get("reference", next(iter(medians.values())))
    for impl in impls:
        ratio = base / medians[impl]
        shown = common.beside_target(ratio, IW_TARGET) if impl == "ablate" and "reference" in medians \
            else f"{ratio:.2f}x"
        print(f"{impl:<12}{medians[impl]:>8.1f} s   speed vs {'reference' if 'reference' in medians else impls[0]}: "
              f"{shown}   runs " + ", ".join(f"{v:.1f}" for v in seconds[impl]))
    print(common.load())


if __name__ == "__main__":
    random.seed(0)
    main()
