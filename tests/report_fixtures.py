"""A hand-made study folder for the report tests, written with the real result-row writers.

Layout as in ablate/results/layout.py: study.json, study.yaml, manifest.parquet, rows/<cell>.a<attempt>.parquet and
curves/<cell>.a<attempt>.curves.parquet. Panels: synthetic × lstm (four arms) and synthetic × t5 (two arms, two seeds).

synthetic × lstm:
- vanilla: seeds 0, 1, 2 — collapsed (KL ≈ 0.01, AU = 0);
- free_bits: lambda_per_dim ∈ {0.25, 0.5} × seeds 0, 1, 2 — KL 3–6, AU 5–9;
- kl_annealing: warmup_epochs ∈ {1, 2} × seeds 0, 1, 2; warmup 2 seed 2 failed (one attempt, no success) and
  warmup 1 seed 2 was never run (missing); KL ≈ 0.05 (collapsed by the KL rule although AU > 0 on some seeds);
- li2019: seeds 0, 1, 2; seed 1 failed at attempt 1 and succeeded at attempt 2 (recovered).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ablate.results.rows import write_atomic, write_curves, write_row

STUDY = "handmade"
STUDY_YAML = """study: handmade
base: {data: {name: synthetic}, model: {name: lstm}}
seeds: [0, 1, 2]
arms:
  - name: vanilla
  - name: free_bits
    techniques: {free_bits: {mode: per_dim_example, lambda_per_dim: [0.25, 0.5]}}
  - name: kl_annealing
    techniques: {kl_annealing: {schedule: linear, warmup_epochs: [1, 2]}}
  - name: li2019
references:
  - arm: vanilla
    model: lstm
    source: "He et al. 2019, Table 2 (Yahoo)"
    conventions: {iw_samples: 500, mi_pool: 32, mi_pool_kind: length_block, token_unit: word, nll: iw}
    values: {nll: 328.6, kl: 0.0, au: 0}
  - arm: li2019
    model: lstm
    source: "a hand-made value with our conventions"
    quoted_in: "a hand-made survey"
    uncertain: "two hand-made sources disagree"
    values: {kl: 7.0}
protocol:
  paper: "A hand-made paper"
  code: "hand/made @ 0000000"
  settings:
    - {topic: learning_rate, paper: "1e-3", expect: {train.lr: 0.001}, source: "made.py:12"}
    - {topic: batch, arms: [vanilla], paper: "64", expect: {train.batch_size: 64}, source: "made.py:13",
       reduced: "a smaller machine"}
"""

# (model, arm, settings, seeds); the order of the study file
CELLS = [
    ("lstm", "vanilla", {}, [0, 1, 2]),
    ("lstm", "free_bits", {"techniques.free_bits.lambda_per_dim": 0.25}, [0, 1, 2]),
    ("lstm", "free_bits", {"techniques.free_bits.lambda_per_dim": 0.5}, [0, 1, 2]),
    ("lstm", "kl_annealing", {"techniques.kl_annealing.warmup_epochs": 1}, [0, 1, 2]),
    ("lstm", "kl_annealing", {"techniques.kl_annealing.warmup_epochs": 2}, [0, 1, 2]),
    ("lstm", "li2019", {}, [0, 1, 2]),
    ("t5", "vanilla", {}, [0, 1]),
    ("t5", "free_bits", {"techniques.free_bits.lambda_per_dim": 0.5}, [0, 1]),
]
FAILED_ONLY = {("lstm", "kl_annealing", 2, 2)}          # (model, arm, warmup, seed): failed, no success
MISSING = {("lstm", "kl_annealing", 1, 2)}              # never run
RECOVERED = {("lstm", "li2019", None, 1)}               # failed at attempt 1, ok at attempt 2

# per arm: (KL, Rec, MI, AU) centres; the noise is seeded per cell
CENTRES = {"vanilla": (0.01, 95.0, 0.001, 0), "free_bits": (4.0, 90.0, 2.0, 6),
           "kl_annealing": (0.05, 94.0, 0.02, 1), "li2019": (7.0, 88.0, 3.0, 10)}
FACTORS = ["sentiment", "topic"]


def cell_id(model: str, arm: str, settings: dict, seed: int) -> str:
    text = json.dumps([model, arm, settings, seed], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _key(model: str, arm: str, settings: dict, seed: int):
    value = next(iter(settings.values())) if arm == "kl_annealing" else None
    return (model, arm, value, seed)


def metrics_for(model: str, arm: str, settings: dict, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(int(cell_id(model, arm, settings, seed), 16) % (2**32))
    kl, rec, mi, au = CENTRES[arm]
    bump = 0.0
    if arm == "free_bits":
        lam = settings["techniques.free_bits.lambda_per_dim"]
        kl *= 1.0 + lam
        # λ = 0.5 is better on validation on average, not on every seed
        bump = -0.6 if lam == 0.5 else 0.0
    out: dict[str, float] = {}
    for split, shift in (("valid", 0.5), ("test", 0.0)):
        k = float(max(kl * (1 + 0.2 * rng.standard_normal()), 0.0))
        r = float(rec + shift + bump + rng.standard_normal())
        if model == "t5":
            r -= 20.0
        n_tokens, n_words, n_sent = 2000.0, 1800.0, 100.0
        nll = r + 0.8 * k + 0.3 * rng.standard_normal()
        out.update({
            f"{split}.kl": k, f"{split}.rec": r, f"{split}.nelbo": r + k, f"{split}.nll": nll,
            f"{split}.ppl": float(np.exp(nll * n_sent / n_tokens)),
            f"{split}.ppl_word": float(np.exp(nll * n_sent / n_words)),
            f"{split}.mi": float(mi + 0.1 * rng.standard_normal()) if mi else float(0.002 * rng.standard_normal()),
            f"{split}.mi_pool": n_sent, f"{split}.au": float(max(0, au + int(rng.integers(-1, 2))) if au else 0),
            f"{split}.n_sentences": n_sent, f"{split}.n_tokens": n_tokens, f"{split}.n_words": n_words,
            f"{split}.n_truncated": 0.0,
        })
        for factor in FACTORS:
            out[f"{split}.probe.{factor}"] = float(0.5 + 0.05 * k + 0.01 * rng.standard_normal())
            out[f"{split}.probe_majority.{factor}"] = 0.5
    return out


KERNELS_LSTM = ("output blocks (logits onednn, ∂h blas, ∂W blas); eval onednn-packed; lstm onednn; "
                "linear blas (eval blas)")
KERNELS_T5 = "output plain; eval onednn-packed; lstm onednn; linear blas (eval onednn); cached"


def make_row(model: str, arm: str, settings: dict, seed: int, attempt: int, status: str = "ok") -> dict:
    cid = cell_id(model, arm, settings, seed)
    row = {
        "run_id": f"{STUDY}.{cid}.a{attempt}", "study": STUDY, "cell_id": cid, "config_hash": cid, "arm": arm,
        "attempt": attempt, "seed": seed, "status": status, "dataset": "synthetic", "model": model,
        "techniques": json.dumps({"config": {}, "versions": {}}), "notes": "",
        "started_at": f"2026-01-0{1 + seed}T10:0{attempt}:00+00:00",
        "finished_at": f"2026-01-0{1 + seed}T10:3{attempt}:00+00:00",
        "train_seconds": 60.0 + seed, "eval_seconds": 5.0, "train_steps": 40, "train_tokens": 8000,
        "train_tokens_per_second": 133.0, "best_epoch": 2, "device": "cpu", "host": "testhost",
        "cpu": "Test CPU (family 1, model 2)",
        "kernels": (KERNELS_LSTM + ("; measured" if seed == 0 else "; cached")) if model == "lstm" else KERNELS_T5,
        "git_commit": "abc123" if model == "lstm" else "def456",
        "version.ablate": "0.1.0", "version.torch": "2.13.0", "version.transformers": "4.50.0",
        "version.python": "3.11.7",
        "eval.iw_samples": 100, "eval.mi_pool": 100, "eval.mi_pool_kind": "dataset", "eval.au_delta": 0.01,
        "eval.token_unit": "word" if model == "lstm" else "subword", "eval.ppl_counts_eos": True,
        "eval.ppl_counts_bos": False,
        "config.seed": seed, "config.model.name": model,
    }
    for key, value in settings.items():
        row[f"config.{key}"] = value
    if status == "ok":
        row.update(metrics_for(model, arm, settings, seed))
        row["error_class"], row["error_message"] = None, None
    else:
        row["error_class"] = "TrainingDiverged"
        row["error_message"] = f"loss became nan at step 17 (seed {seed})"
    return row


def curves_for(arm: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed + 100 * len(arm))
    rows = []
    pre = 10 if arm == "li2019" else 0
    kl0 = CENTRES[arm][0]
    for step in range(40):
        phase = "pretrain" if step < pre else "vae"
        beta = 0.0 if phase == "pretrain" else min(1.0, (step - pre + 1) / 15) if arm in ("kl_annealing", "li2019") \
            else 1.0
        kl = kl0 * (1 + 0.1 * rng.standard_normal()) + (5.0 if phase == "pretrain" else 0.0)
        rec = 120.0 - step + rng.standard_normal()
        rows.append({"step": step, "epoch": step // 10, "phase": phase, "split": "train", "beta": beta, "kl": kl,
                     "rec": rec, "loss": rec + beta * kl})
    for epoch in range(4):
        rows.append({"step": 10 * epoch + 9, "epoch": epoch, "phase": "pretrain" if 10 * epoch < pre else "vae",
                     "split": "valid", "beta": 1.0, "kl": kl0, "rec": 100.0 - epoch, "loss": 100.0 - epoch + kl0})
    return rows


def write_study(root: Path, with_curves: bool = True) -> Path:
    """Write the hand-made study under root/handmade and return that folder."""
    folder = root / STUDY
    runs, curves = folder / "rows", folder / "curves"
    runs.mkdir(parents=True, exist_ok=True)
    curves.mkdir(exist_ok=True)
    (folder / "study.yaml").write_text(STUDY_YAML)
    (folder / "study.json").write_text(json.dumps({
        "study": STUDY, "study_file": "studies/handmade.yaml",
        "study_hash": hashlib.sha256(STUDY_YAML.encode()).hexdigest(), "created": "2026-01-01T09:00:00+00:00",
        "updated": "2026-01-03T11:00:00+00:00", "cells": 21}, indent=2) + "\n")
    manifest = []
    for model, arm, settings, seeds in CELLS:
        for seed in seeds:
            cid = cell_id(model, arm, settings, seed)
            manifest.append({"cell_id": cid, "arm": arm, "dataset": "synthetic", "model": model, "seed": seed,
                             "settings": json.dumps(settings, sort_keys=True),
                             "config": json.dumps({"arm": arm, "model": model, "seed": seed, **settings},
                                                  sort_keys=True)})
            key = _key(model, arm, settings, seed)
            if key in MISSING:
                continue
            if key in FAILED_ONLY or key in RECOVERED:
                write_row(make_row(model, arm, settings, seed, 1, "failed"), runs / f"{cid}.a1.parquet")
            if key in FAILED_ONLY:
                continue
            attempt = 2 if key in RECOVERED else 1
            row = make_row(model, arm, settings, seed, attempt)
            write_row(row, runs / f"{cid}.a{attempt}.parquet")
            if with_curves:
                write_curves(curves_for(arm, seed), row["run_id"], curves / f"{cid}.a{attempt}.curves.parquet")
    schema = pa.schema([("cell_id", pa.string()), ("arm", pa.string()), ("dataset", pa.string()),
                        ("model", pa.string()), ("seed", pa.int64()), ("settings", pa.string()),
                        ("config", pa.string())])
    table = pa.Table.from_pydict({f.name: [r[f.name] for r in manifest] for f in schema}, schema=schema)
    write_atomic(table, folder / "manifest.parquet")
    return folder
