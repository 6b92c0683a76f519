"""The T5 VAE's training throughput (and, on a GPU, its model-FLOPs utilisation), through ablate's training loop.

    python benchmarks/bench_t5.py                                   # CPU: the example size and t5-small's size
    python benchmarks/bench_t5.py --device cuda --precision bf16 --sizes t5_small --steps 200   # a lent GPU
    python benchmarks/bench_t5.py --sizes example --steps 100 --threads 1 --compare-precision 3  # fp32 vs bf16

Sizes: `example` is studies/examples/t5_vae.yaml's (d_model 128, 2 layers, BPE vocabulary 1000); `t5_small` is
t5-small's architecture (d_model 512, 6+6 layers, 8 heads, d_ff 2048) with the real t5-small tokenizer when
../shared/data/t5_tokenizer is there (32k vocabulary), else a BPE vocabulary fitted on the corpus. Random init,
Lee & Park's memory injection, the embedded corpus, batch 32. Model FLOPs per token ≈ 6 × parameters (forward
and backward; Kaplan et al. 2020), so MFU = 6·N·tokens/s ÷ the device's peak (--peak-tflops, default the H200's
dense bf16 989 TFLOP/s or fp32 67 TFLOP/s on CUDA (no TF32: PyTorch's default), on a CPU the GEMM rate measured
here in the training precision — bf16 work against an fp32 rate would read as more than 100 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from common import SHARED, cpu_model, gemm_gflops, load
from ablate.core.config_reading import build_config
from ablate.models.kernels import using
from ablate.engine.run import build, choose_kernels, prepare, use_kernels
from ablate.engine.train import train

ARCH = {"example": {"family": "t5", "d_model": 128, "num_layers": 2, "num_heads": 4, "d_ff": 512, "dropout": 0.1},
        "t5_small": {"family": "t5", "d_model": 512, "num_layers": 6, "num_heads": 8, "d_ff": 2048, "dropout": 0.1}}


def model_section(size: str) -> dict:
    section = {"name": "seq2seq", "config": ARCH[size], "pooling": "max", "injection": "memory", "nz": 32}
    tokenizer = SHARED / "t5_tokenizer"
    if size == "t5_small" and tokenizer.exists():
        section["tokenizer"] = str(tokenizer)
    else:
        section.update({"tokenizer": "train", "tokenizer_vocab_size": 1000})
    return section


H200_PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}  # NVIDIA's H200 SXM datasheet: dense bf16 tensor cores, fp32


def mfu_peak_tflops(device: torch.device, precision: str) -> float:
    """The denominator of MFU: the H200's peak for the precision on CUDA, else the GEMM rate measured here in it."""
    if device.type == "cuda":
        return H200_PEAK_TFLOPS[precision]
    return gemm_gflops(dtype=torch.bfloat16 if precision == "bf16" else torch.float32) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="example,t5_small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--compare-linear", type=int, default=0, metavar="REPEATS",
                        help="instead: the Linear layers through MKL (blas) and oneDNN, interleaved, REPEATS times "
                        "each, in one process on the same model (the rest of the kernels as chosen)")
    parser.add_argument("--compare-precision", type=int, default=0, metavar="REPEATS",
                        help="instead: training in fp32 and in bf16 (autocast), interleaved, REPEATS times each, in "
                        "one process on the same model, each precision with the kernels chosen for it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = args.peak_tflops or mfu_peak_tflops(device, args.precision)
    print(f"T5 VAE training, {args.device}, {args.precision}, batch 32, {args.steps} steps after 5 warm-up; "
          f"peak for MFU {peak:.3g} TFLOP/s; {load()}; {cpu_model()}")
    print(f"{'size':<10}{'params':>10}{'vocab':>7}{'tokens/s':>10}{'ms/step':>9}{'MFU':>7}")
    for size in args.sizes.split(","):
        config = build_config({"data": {"name": "synthetic"}, "model": model_section(size),
                               "train": {"batch_size": 32, "max_steps": 5, "device": args.device,
                                         "precision": args.precision, "lr": 5e-4},
                               "eval": {"splits": []}}, "<bench>")
        prepared = prepare(config)
        model = build(config, prepared)
        params = sum(p.numel() for p in model.parameters())
        valid = prepared.splits["valid"].head(8)
        framing = prepared.tokenizer.framing
        chosen = choose_kernels(model, config, prepared, device)
        use_kernels(chosen)
        train(model, [], prepared.splits["train"], valid, framing, config.train, device, 0, progress=False)  # warm-up
        config.train.max_steps = args.steps
        if args.compare_linear:
            compare_linear(model, prepared, config, device, chosen, size, args.compare_linear)
            continue
        if args.compare_precision:
            compare_precision(model, prepared, config, device, size, args.compare_precision)
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        state = train(model, [], prepared.splits["train"], valid, framing, config.train, device, 1,
                      progress=False).state
        if device.type == "cuda":
            torch.cuda.synchronize()
        tokens_per_s = state.train_tokens / state.train_seconds
        mfu = 6 * params * tokens_per_s / (peak * 1e12)
        print(f"{size:<10}{params / 1e6:>9.1f}M{len(prepared.tokenizer):>7}{tokens_per_s:>10.0f}"
              f"{1000 * state.train_seconds / args.steps:>9.1f}{100 * mfu:>6.1f}%   (wall {time.perf_counter() - started:.1f} s"
              " incl. one validation pass)")
    print(load())


def interleaved_medians(model, prepared, device, size: str, repeats: int, variants: dict) -> dict[str, float]:
    """Median training tokens/s of each variant (label -> (train config, kernels)), run in turn `repeats` times."""
    valid = prepared.splits["valid"].head(8)
    rates: dict[str, list[float]] = {label: [] for label in variants}
    for repeat in range(repeats):
        for label, (train_config, kernels) in variants.items():
            with using(kernels):
                state = train(model, [], prepared.splits["train"], valid, prepared.tokenizer.framing, train_config,
                              device, repeat + 1, progress=False).state
            rates[label].append(state.train_tokens / state.train_seconds)
            print(f"  {size} repeat {repeat + 1} {label:<14}{rates[label][-1]:>9.0f} tokens/s; {load()}", flush=True)
    return {label: statistics.median(r) for label, r in rates.items()}


def compare_linear(model, prepared, config, device, chosen, size: str, repeats: int) -> None:
    """tokens/s with the Linear layers through MKL and through oneDNN, interleaved, medians of `repeats`."""
    variants = {f"linear {b}": (config.train, dataclasses.replace(chosen, linear=b)) for b in ("blas", "onednn")}
    medians = interleaved_medians(model, prepared, device, size, repeats, variants)
    blas, onednn = medians["linear blas"], medians["linear onednn"]
    print(f"{size}: linear blas {blas:.0f}, onednn {onednn:.0f} tokens/s: {onednn / blas:.2f}x "
          f"(chosen at start-up: {chosen.linear})")


def compare_precision(model, prepared, config, device, size: str, repeats: int) -> None:
    """tokens/s of training in fp32 and in bf16, interleaved, medians of `repeats` (steady state: the first call
    of each precision is a warm-up, not counted)."""
    variants = {}
    for precision in ("fp32", "bf16"):
        train_config = config.train.model_copy(update={"precision": precision})
        kernels = choose_kernels(model, config.model_copy(update={"train": train_config}), prepared, device)
        variants[precision] = (train_config, kernels)
        with using(kernels):
            train(model, [], prepared.splits["train"], prepared.splits["valid"].head(8), prepared.tokenizer.framing,
                  train_config.model_copy(update={"max_steps": 5}), device, 0, progress=False)
    medians = interleaved_medians(model, prepared, device, size, repeats, variants)
    print(f"{size}: fp32 {medians['fp32']:.0f}, bf16 {medians['bf16']:.0f} tokens/s: "
          f"{medians['bf16'] / medians['fp32']:.2f}x ({repeats} interleaved repeats; kernels fp32: "
          f"{variants['fp32'][1].describe()}; bf16: {variants['bf16'][1].describe()})")


if __name__ == "__main__":
    main()
