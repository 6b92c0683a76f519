#!/usr/bin/env bash
# The GPU figures, in one run on a lent GPU (about 5 minutes, plus about as much for the Li et al. epochs): the T5
# VAE at t5-small's size in bf16 (tokens/s and model-FLOPs utilisation), Li et al.'s LSTM VAE in fp32 (tokens/s,
# against the bare loop), and one Li et al. PTB epoch in fp32 and in bf16 with IW K = 500 over the whole PTB test
# set (train and eval seconds, test NLL of each).
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python bench_t5.py --device cuda --precision bf16 --sizes t5_small --steps 200
python bench_t5.py --device cuda --precision fp32 --sizes t5_small --steps 100
python bench_train.py --device cuda --sizes li_ptb --repeats 3 2>&1 || echo "(bench_train needs ../shared/data/ptb)"
python bench_bf16.py --device cuda --epochs 1 --iw 500 --seeds 0 2>&1 || echo "(bench_bf16 needs ../shared/data/ptb)"
