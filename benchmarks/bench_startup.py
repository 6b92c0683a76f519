"""Time from launching `ablate run` to its first training step, on the embedded corpus.

    python benchmarks/bench_startup.py [--config studies/examples/lstm_vae.yaml] [--repeats 5]

The command runs as users run it (a fresh Python process, `python -m ablate.cli.main run CONFIG`), with one hook added
by the launcher: at the first training step it prints the wall-clock time and exits. Median of --repeats.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, load

CHILD = """
import sys, time, os
import ablate.engine.train as train
original = train.forward_parts
def first_step(*args, **kwargs):
    print(f"FIRST_STEP {time.time()!r}", flush=True)
    os._exit(0)
train.forward_parts = first_step
from ablate.cli.main import main
sys.exit(main(["run", sys.argv[1], "--out", sys.argv[2]]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "studies/examples/lstm_vae.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    seconds = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):
            started = time.time()
            proc = subprocess.run([sys.executable, "-c", CHILD, args.config, out], capture_output=True, text=True,
                                  cwd=ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FIRST_STEP")]
            if not line:
                raise SystemExit(f"no training step reached:\n{proc.stdout}\n{proc.stderr}")
            seconds.append(float(line[0].split()[1]) - started)
    print(f"`ablate run {Path(args.config).name}` to the first training step: median {statistics.median(seconds):.2f} s "
          f"(runs: {', '.join(f'{s:.2f}' for s in seconds)}); {load()}")


if __name__ == "__main__":
    main()
