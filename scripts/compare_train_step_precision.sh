#!/usr/bin/env bash
# The U-Net's training step and forward in f32 and in mixed bf16, ours (`--precision bf16`:
# bf16 convolution operands, f32 sums) and PyTorch's (f32 and bf16 autocast), alternated in one
# run on the same machine (docs/PERFORMANCE.md, "bf16 convolutions").
#
#   PYTHON=/path/to/venv/bin/python scripts/compare_train_step_precision.sh [CASES] [RUNS] [ROUNDS]
# CASES: pipeline, deeplense or both (comma-separated, as bench_train_step.py takes them).
set -euo pipefail
cases=${1:-deeplense}; runs=${2:-3}; rounds=${3:-2}
py=${PYTHON:-python3}
cargo bench --bench train_step --no-run 2>/dev/null
bench=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)
grep -m1 "model name" /proc/cpuinfo
grep -o -w -E "avx512f|avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for r in $(seq "$rounds"); do
  echo "round $r"
  for c in ${cases//,/ }; do
    for p in f32 bf16; do
      TRAIN_STEP_DTYPE=$p TRAIN_STEP_QUICK=$runs "$bench" "$c" | sed "s/^/  ours $p  /"
    done
  done
  for p in f32 bf16; do
    "$py" scripts/bench_train_step.py --threads 2 --runs "$runs" --cases "$cases" --precision "$p" | sed "s/^/  torch $p  /"
  done
done
