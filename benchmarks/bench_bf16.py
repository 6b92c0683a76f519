"""bf16 training on a CPU against fp32: tokens/s and the test metrics, same seed, Li et al.'s PTB model.

    python benchmarks/bench_bf16.py [--epochs 1] [--iw 100] [--threads 2] [--seeds 0,1,2] [--device cuda]

Trains Li et al.'s PTB LSTM VAE (emb 256, hidden 256/256, nz 32, batch 32, SGD lr 1, KL annealed 0 → 1 over the
run) twice from the same seed — `train.precision: fp32`, then `bf16` (autocast of the networks; the output layer's
products in bf16 with fp32 softmax and ∂W; metrics always fp32) — each in its own process through
`ablate.engine.run.execute`, and evaluates both on the whole PTB test set (IW-NLL with --iw samples). Prints each run's
training tokens/s and test metrics, and bf16's relative difference; bf16 is the documented fast path when the
test NLL stays within 0.3 % of fp32's. With several seeds the runs pair up by seed (fp32 then bf16, seed after
seed): it prints each pair's difference, their mean ± SE, and fp32's own spread over the seeds — how far the NLL
moves when only the random stream changes, the scale against which a precision difference means anything.
(Speed interleaved with the reference: bench_reference.py --impls ablate,ablate-bf16.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

METRICS = ("test.nll", "test.ppl", "test.nelbo", "test.kl", "test.mi", "test.au")


def one(precision: str, epochs: int, iw: int, threads: int, seed: int = 0, device: str = "cpu") -> dict:
    import torch

    from ablate.core.config_reading import build_config
    from ablate.engine.run import execute

    config = build_config({
        "data": common.corpus_config("ptb"),
        "model": {**common.LI_PTB, "dec_dropout_in": 0.5, "dec_dropout_out": 0.5, "output_bias": False},
        "train": {"optimizer": "sgd", "lr": 1.0, "batch_size": 32, "epochs": epochs, "device": device,
                  "grad_clip": 5.0, "precision": precision, "threads": threads},
        "techniques": {"kl_annealing": {"schedule": "linear", "start": 0.0, "warmup_epochs": epochs}},
        "eval": {"splits": ["test"], "iw_samples": iw, "mi_pool": "dataset"}, "seed": seed}, "<bench>")
    with tempfile.TemporaryDirectory() as folder:
        row = execute(config, Path(folder), progress=False, save_model=False).row
    if row["status"] != "ok":
        raise SystemExit(f"{precision}: {row.get('error_message')}")
    torch.set_num_threads(threads)
    return {key: row.get(key) for key in METRICS + ("train_tokens_per_second", "train_seconds", "eval_seconds",
                                                    "kernels")}


def run_one(precision: str, seed: int, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", precision, "--seed", str(seed), "--epochs",
                          str(args.epochs), "--iw", str(args.iw), "--threads", str(args.threads), "--device",
                          args.device],
                         capture_output=True, text=True, cwd=Path(__file__).parent)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  seed {seed} {precision}: {row['train_tokens_per_second']:.0f} tokens/s, train "
          f"{row['train_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s, test NLL {row['test.nll']:.3f}; "
          f"{common.load()}; kernels: {row['kernels']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iw", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (benchmarks/gpu.sh)")
    parser.add_argument("--seeds", default="0", help="comma-separated; runs pair up by seed")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.epochs, args.iw, args.threads, args.seed, args.device)))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"bf16 vs fp32 training, Li et al.'s PTB VAE, {args.epochs} epoch(s), seeds {seeds}, test IW K={args.iw}, "
          f"{args.device}; {common.cpu_model()}")
    runs = {seed: {precision: run_one(precision, seed, args) for precision in ("fp32", "bf16")} for seed in seeds}
    for seed, rows in runs.items():
        print(f"seed {seed}:{'':<20}{'fp32':>10}{'bf16':>10}{'bf16 − fp32':>14}")
        for key in ("train_tokens_per_second",) + METRICS:
            a, b = rows["fp32"][key], rows["bf16"][key]
            relative = f" ({(b - a) / abs(a) * 100:+.2f} %)" if a else ""
            print(f"  {key:<26}{a:>10.3f}{b:>10.3f}{b - a:>+14.3f}{relative}")
    deltas = [(r["bf16"]["test.nll"] - r["fp32"]["test.nll"]) / r["fp32"]["test.nll"] * 100 for r in runs.values()]
    speed = statistics.median(r["bf16"]["train_tokens_per_second"] / r["fp32"]["train_tokens_per_second"]
                              for r in runs.values())
    if len(seeds) == 1:
        print(f"test NLL: bf16 is {deltas[0]:+.2f} % of fp32's (target: within ±0.3 %); speed {speed:.2f}x")
        return
    se = statistics.stdev(deltas) / len(deltas) ** 0.5
    fp32 = [r["fp32"]["test.nll"] for r in runs.values()]
    print(f"test NLL, bf16 − fp32 paired by seed: {', '.join(f'{d:+.2f} %' for d in deltas)}; mean "
          f"{statistics.mean(deltas):+.2f} ± {se:.2f} % (SE) (target: within ±0.3 %)")
    print(f"fp32 alone over the seeds: {statistics.mean(fp32):.3f} ± {statistics.stdev(fp32):.3f} (std), "
          f"{statistics.stdev(fp32) / statistics.mean(fp32) * 100:.2f} %; bf16 speed (median ratio) {speed:.2f}x")


if __name__ == "__main__":
    main()
