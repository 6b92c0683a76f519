"""Shared pieces of the benchmarks: the PTB corpus, Li et al.'s model, the machine's GEMM rate, load, medians."""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ablate.models.kernel_choice import cpu_model as kernel_cpu_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# Li et al. 2019 (PTB): emb 256, hidden 256/256, nz 32, batch 32; He et al. 2019 (Yahoo): 512/1024/1024.
LI_PTB = {"emb_dim": 256, "enc_hidden": 256, "dec_hidden": 256, "nz": 32}
HE_YAHOO = {"emb_dim": 512, "enc_hidden": 1024, "dec_hidden": 1024, "nz": 32}


def corpus_config(name: str, **extra) -> dict:
    """A data section for the real corpora in ../shared/data (exits with a reason when they are absent)."""
    if name == "ptb":
        path = SHARED / "ptb"
        data = {"name": "ptb", "path": str(path)}
    else:  # Yahoo (Yang et al. 2017): the valid split stands in for train (the train split is not shipped)
        path = SHARED / "yahoo_yang2017"
        data = {"name": "yahoo", "path": str(path),
                "files": {"train": "val.txt", "valid": "test.txt", "test": "test.txt"}}
    if not path.exists():
        raise SystemExit(f"benchmark needs {path} (see ../shared/data/README.md)")
    return {**data, **extra}


def li_ptb_model():
    """(config, prepared, model in eval mode): Li et al.'s PTB LSTM, random init (costs do not depend on weights)."""
    from ablate.core.config_reading import build_config
    from ablate.engine.run import build, prepare

    config = build_config({"data": corpus_config("ptb"), "model": LI_PTB, "train": {"device": "cpu"}}, "<bench>")
    prepared = prepare(config)
    return config, prepared, build(config, prepared).eval()


def load() -> str:
    """The 10 s / 60 s CPU pressure of this machine (other work shares it), for the record beside each figure."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        parts = dict(p.split("=") for p in first.split()[1:])
        return f"cpu pressure avg10 {parts['avg10']} avg60 {parts['avg60']}; loadavg {os.getloadavg()[0]:.2f}"
    except (OSError, KeyError, ValueError):
        return f"loadavg {os.getloadavg()[0]:.2f}"


def gemm_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The machine's matrix-multiply rate now in `dtype`: the better of torch's default BLAS (MKL) and oneDNN, each
    the median of `repeats` size×size products (on AMD CPUs MKL takes a slower path; oneDNN reaches the hardware)."""
    return max(gemm_rates(size, repeats, dtype).values())


def gemm_rates(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    products = {"blas": lambda: a @ b}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        bt = b.t().contiguous()
        products["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    rates = {}
    for name, product in products.items():
        product()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            product()
            times.append(time.perf_counter() - t0)
        rates[name] = 2 * size ** 3 / statistics.median(times) / 1e9
    return rates


def beside_target(ratio: float, target: float) -> str:
    """A speed ratio with issue 24's target for it and whether this run meets it: "1.42x (target ≥ 1.5x: missed)"."""
    return f"{ratio:.2f}x (target ≥ {target:g}x: {'met' if ratio >= target else 'missed'})"


def median_of(fn: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    values = [fn() for _ in range(repeats)]
    return statistics.median(values), values


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    """The CPU model (with its family and model numbers: figures differ widely between the machines' CPUs, and a VM
    may call several generations by one name), its core count and torch's version."""
    return f"CPU {kernel_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
