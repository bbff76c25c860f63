#!/usr/bin/env bash
# The lensing classifier's training step and forward, ours (burn Flex + kernel-ops) and
# PyTorch's, alternated in one run on the same machine (docs/PERFORMANCE.md).
#
#   PYTHON=/path/to/venv/bin/python scripts/compare_classifier_step.sh [SIZE] [BATCH] [RUNS] [ROUNDS]
set -euo pipefail
size=${1:-128}; batch=${2:-32}; runs=${3:-5}; rounds=${4:-2}
py=${PYTHON:-python3}
cargo bench -p gen-metrics --bench classifier_step --no-run 2>/dev/null
bench=$(ls -t target/release/deps/classifier_step-* | grep -v '\.d$' | head -1)
grep -m1 "model name" /proc/cpuinfo
for r in $(seq "$rounds"); do
  echo "round $r"
  CLASSIFIER_SIZE=$size CLASSIFIER_BATCH=$batch CLASSIFIER_QUICK=$runs "$bench" | sed 's/^/  ours  /'
  "$py" scripts/bench_classifier_step.py --threads 2 --size "$size" --batch "$batch" --runs "$runs" | sed 's/^/  /'
done
