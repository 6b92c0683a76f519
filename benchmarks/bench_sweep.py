"""Sweep cell throughput with --jobs 1 and --jobs 2, on cells of realistic size (≥ 30 s each on 2 cores).

    python benchmarks/bench_sweep.py [--cells 4] [--repeats 1]

A study of --cells LSTM cells on the embedded corpus (lstm_vae.yaml's model; 6 epochs; K = 100; seeds differ) is
written to a temporary folder and swept with `ablate sweep --jobs 1` (one worker in the sweep's process, torch's
default threads) and `--jobs 2` (two worker processes, one thread each), alternately, into fresh result folders.
Throughput is cells per wall-clock minute of the whole command (start-up, queueing and evaluation included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, cpu_model, load

STUDY = """study: bench_sweep
base:
  data: {{name: synthetic}}
  model: {{name: lstm, emb_dim: 64, enc_hidden: 128, dec_hidden: 128, nz: 16, init_uniform: 0.1}}
  train: {{epochs: 6, batch_size: 32, device: cpu}}
  eval: {{iw_samples: 100, probe: false}}
seeds: {seeds}
arms:
  - name: vanilla
    techniques: {{}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    walls: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "bench_sweep.yaml"
        study.write_text(STUDY.format(seeds=list(range(args.cells))))
        for repeat in range(args.repeats):
            for jobs in (1, 2):
                out = Path(tmp) / f"results-{jobs}-{repeat}"
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "ablate", "sweep", str(study), "--jobs", str(jobs),
                                       "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
                walls[jobs].append(time.perf_counter() - started)
                if proc.returncode:
                    raise SystemExit(proc.stdout + proc.stderr)
    print(f"sweep of {args.cells} LSTM cells on the embedded corpus; {cpu_model()}; {load()}")
    for jobs, ws in walls.items():
        print(f"--jobs {jobs}: wall {statistics.median(ws):.1f} s, {60 * args.cells / statistics.median(ws):.2f} "
              f"cells/min (runs: {', '.join(f'{w:.1f}' for w in ws)})")
    ratio = statistics.median(walls[1]) / statistics.median(walls[2])
    print(f"--jobs 2 / --jobs 1 throughput: {ratio:.2f}x (target: the default worker count gives the most cells per "
          f"minute; the default, one worker per core, is {'right' if ratio >= 1 else 'wrong'} here); " + load())


if __name__ == "__main__":
    main()
