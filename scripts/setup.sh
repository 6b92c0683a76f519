#!/usr/bin/env bash
# One-time set-up of a fresh machine: the CPU build of torch (pinned: an unpinned torch pulls the CUDA wheels),
# then ablate itself with its dependencies and pytest. Safe to re-run.
#   bash scripts/setup.sh               # to use ablate
#   bash scripts/setup.sh --tests       # also what the test suite needs: tensorboard, psycopg, duckdb, and the
#                                       # Debian packages chromium (the report in a browser) and postgresql
#                                       # (sweeps on PostgreSQL)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--tests" ]; then
  python3 -m pip install -q -e ".[test,tensorboard,postgres]"
else
  python3 -m pip install -q -e ".[test]"
fi
if [ "${1:-}" = "--tests" ]; then
  missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
        || echo "setup: could not install ${missing[*]}; the tests that need them will be skipped" >&2
    else
      echo "setup: ${missing[*]} not found; install the Debian package(s) to run the tests that need them" >&2
    fi
  fi
fi
