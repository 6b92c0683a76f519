"""How noisy each MI estimator is on trained models: He et al.'s one-draw estimate against the paired one, over
the estimator's seeds (the model and the sentences fixed), printed as a Markdown table.

    python benchmarks/mi_noise.py results/bnvae_ptb/models [--sentences 1000] [--seeds 20] [--samples 8]

Each saved model (`*.model.pt`, a sweep's models/ folder) encodes the first --sentences sentences of its test split
once; each estimator then runs with --seeds generator seeds. A collapsed model's true MI is 0; the spread over seeds
is the estimator's own noise (He et al.'s: ≈ √(nz / 2N)). The CPU model and the load are printed beside the table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

import torch

from ablate.engine.evaluate import encode_all
from ablate.metrics.estimators import mutual_information, mutual_information_paired
from ablate.results.rows import read_rows
from ablate.engine.saved_models import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, help="a folder of *.model.pt files (a study's models/)")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8, help="S of the paired estimator")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    print(f"# CPU: {cpu}; load: {Path('/proc/pressure/cpu').read_text().splitlines()[0]}")
    print(f"| model | N | nz | He et al. (mean ± SD) | paired S = {args.samples} (mean ± SD) |")
    print("|---|---|---|---|---|")
    for path in sorted(args.models.glob("*.model.pt")):
        config, prepared, model = load_run(path)
        split = prepared.splits["test"].head(args.sentences)
        mu, logvar = encode_all(model, split, prepared.tokenizer.framing, 64, torch.device("cpu"))
        he = [mutual_information(mu, logvar, generator=torch.Generator().manual_seed(s))[0]
              for s in range(args.seeds)]
        paired = [mutual_information_paired(mu, logvar, args.samples, torch.Generator().manual_seed(s))[0]
                  for s in range(args.seeds)]
        row_file = path.parent.parent / "rows" / path.name.replace(".model.pt", ".parquet")
        rows = read_rows([row_file], [], {"arm"}) if row_file.exists() else None
        name = rows["arm"].iloc[0] if rows is not None and not rows.empty else path.stem
        print(f"| {name} | {mu.shape[0]} | {mu.shape[1]} | {statistics.mean(he):.3f} ± {statistics.stdev(he):.3f} | "
              f"{statistics.mean(paired):.4f} ± {statistics.stdev(paired):.4f} |", flush=True)


if __name__ == "__main__":
    main()
