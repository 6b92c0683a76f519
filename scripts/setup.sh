#!/usr/bin/env bash
# One-time set-up of a fresh machine: the CPU build of torch (pinned: an unpinned torch pulls the CUDA wheels),
# then ablate itself with its dependencies and pytest. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test]"
