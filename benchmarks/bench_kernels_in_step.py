"""The kernel choice checked inside the trainer's real step: candidate settings, paired on the same batches.

    python benchmarks/bench_kernels_in_step.py [--threads 2] [--rounds 6] [--steps 25] \
        [--settings "grad_h=blas,grad_w=blas" "grad_h=onednn-view" ...]

ablate.models.kernel_choice times each candidate product alone at start-up; this asks whether the pick also wins
where it counts, in ablate's own training step (`Trainer.step`: forward, backward, clipping, the optimiser) at Li
et al.'s PTB configuration (emb 256, hidden 256/256, nz 32, batch 32, dropout 0.5/0.5, SGD lr 1, clip 5, one-length
batches, fp32). One process, one model: each round takes the next `--steps` batches and runs every setting on
those same batches (the order reversed every other round), so settings are compared on equal work under the same
load; the model keeps training throughout, which changes no product's cost. Settings are $ABLATE_KERNELS-style
(`name=value,…` over the start-up choice); the first row is the start-up choice itself. Printed: tokens/s per
setting (median over rounds, and every round), each setting's median ratio to the choice over the paired rounds,
the CPU model and the CPU pressure.

On an AMD EPYC of family 25, model 17 (Zen 4), 2 threads, 2026-12-03 (benchmarks/README.md): every candidate
within −6 … +7 % of the choice round by round, none faster beyond the noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time

import torch

import common
from ablate.core.config_reading import build_config
from ablate.data.batching import iterate_batches
from ablate.engine.run import build, choose_kernels, prepare
from ablate.engine.train import Trainer
from ablate.models.kernel_choice import parse_setting
from ablate.models.kernels import Kernels, using

DEFAULT_SETTINGS = ("grad_h=blas,grad_w=blas", "grad_h=onednn-view", "grad_w=onednn-t", "logits=blas")


def li_trainer(threads: int) -> tuple[Trainer, list, Kernels]:
    """ablate's Trainer at Li et al.'s PTB config, its one-length batches in a shuffled order, the start-up choice."""
    torch.set_num_threads(threads)
    config = build_config({
        "data": common.corpus_config("ptb"),
        "model": {**common.LI_PTB, "dec_dropout_in": 0.5, "dec_dropout_out": 0.5, "output_bias": False},
        "train": {"optimizer": "sgd", "lr": 1.0, "batch_size": 32, "device": "cpu", "grad_clip": 5.0,
                  "batching": "one_length"},
        "eval": {"splits": []}, "seed": 0}, "<bench>")
    prepared = prepare(config)
    model = build(config, prepared)
    chosen = choose_kernels(model, config, prepared, torch.device("cpu"))
    trainer = Trainer(model, [], prepared.splits["train"], prepared.splits["valid"], prepared.tokenizer.framing,
                      config.train, torch.device("cpu"), config.seed, config.eval.batch_size)
    batches = iterate_batches(prepared.splits["train"], prepared.tokenizer.framing, config.train.batch_size,
                              random.Random(0), one_length=True)
    return trainer, batches, chosen


def tokens_per_second(trainer: Trainer, batches: list, kernels: Kernels) -> float:
    with using(kernels):
        started = time.perf_counter()
        tokens = 0
        for batch in batches:
            tokens += int(batch.dec_mask.sum())
            trainer.step([batch], batches)
        return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25, help="batches per round (each setting runs all of them)")
    parser.add_argument("--settings", nargs="*", default=list(DEFAULT_SETTINGS),
                        help="name=value,… over the start-up choice (see $ABLATE_KERNELS)")
    args = parser.parse_args()
    trainer, batches, chosen = li_trainer(args.threads)
    settings = {"(the start-up choice)": chosen}
    for text in args.settings:
        settings[text] = dataclasses.replace(chosen, **parse_setting(text), how="set")
    print(f"the output layer's kernels inside ablate's training step, Li et al.'s PTB config, fp32, "
          f"{args.threads} threads; {common.cpu_model()}")
    print(f"start-up choice: {chosen.describe()}")
    needed = 10 + args.rounds * args.steps
    if needed > len(batches):
        raise SystemExit(f"--rounds × --steps needs {needed} batches; PTB's training split has {len(batches)}")
    tokens_per_second(trainer, batches[:10], chosen)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for round_ in range(args.rounds):
        chunk = batches[10 + round_ * args.steps: 10 + (round_ + 1) * args.steps]
        order = list(settings.items())
        for name, kernels in (order if round_ % 2 == 0 else order[::-1]):
            rates[name].append(tokens_per_second(trainer, chunk, kernels))
        print(f"  round {round_ + 1}: " + ", ".join(f"{rates[n][-1]:.0f}" for n in settings) + f"; {common.load()}",
              flush=True)
    base = rates["(the start-up choice)"]
    print(f"{'setting':<32}{'tokens/s':>10}{'vs choice':>11}   rounds")
    for name, values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, base))
        print(f"{name:<32}{statistics.median(values):>10.0f}{ratio:>10.2f}x   " + " ".join(f"{v:.0f}" for v in values))
    print(common.load())


if __name__ == "__main__":
    main()
