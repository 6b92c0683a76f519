#!/usr/bin/env bash
# One-time set-up of a fresh machine: the CPU build of torch (pinned: an unpinned torch pulls the CUDA wheels),
# then ablate itself with its dependencies and pytest. Safe to re-run.
#   bash scripts/setup.sh               # to use ablate
#   bash scripts/setup.sh --tests       # also what the test suite needs: tensorboard, headless Chromium (Debian)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--tests" ]; then
  python3 -m pip install -q -e ".[test,tensorboard]"
else
  python3 -m pip install -q -e ".[test]"
fi
if [ "${1:-}" = "--tests" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test of the report will be skipped" >&2
  else
    echo "setup: chromium not found; install the 'chromium' package to run the report's browser test" >&2
  fi
fi
