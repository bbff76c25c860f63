#!/usr/bin/env bash
# Builds, on any machine (no GPU needed), the binaries scripts/gpu_train_step.sh runs on a GPU
# machine, into one folder small enough to carry there (gzipped):
#   train_step-tch, train_step-cuda-untuned, train_step-cuda   the train_step bench per engine
#   lensing-diffusion                                          the command (cuda-untuned + tch)
#
#   bash scripts/build_gpu_bins.sh [OUT_DIR]          # default target/gpu-bins
#
# The tch builds need libtorch 2.9 here and there. Here: a PyTorch 2.9 wheel in the python3 on
# PATH and LIBTORCH_USE_PYTORCH=1 (set below unless LIBTORCH is set). There: the same torch
# version, found by gpu_train_step.sh. ENGINES="cuda-untuned cuda" skips tch.
# CUDARC_CUDA_VERSION (default 12080): the CUDA version of the GPU machine's driver as cudarc
# spells it; without a CUDA toolkit at build time cudarc otherwise assumes the newest it knows.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/gpu-bins}
ENGINES=${ENGINES:-"tch cuda-untuned cuda"}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-12080}
[ -n "${LIBTORCH:-}" ] || export LIBTORCH_USE_PYTORCH=1
mkdir -p "$OUT"
newest_bench() { ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/train_step-* | grep -v '\.d$' | head -1; }
for e in $ENGINES; do
    echo "== train_step bench, --features $e"
    cargo bench --features "$e" --bench train_step --no-run
    cp "$(newest_bench)" "$OUT/train_step-$e"
done
cmd_features=$(echo "$ENGINES" | tr ' ' '\n' | grep -E '^(tch|cuda-untuned)$' | paste -sd, -)
echo "== lensing-diffusion, --features $cmd_features"
cargo build --release --features "$cmd_features"
cp "${CARGO_TARGET_DIR:-target}/release/lensing-diffusion" "$OUT/"
# Stripped and gzipped (about 9 MB each instead of 240) so that all four fit a 64 MiB transfer;
# gpu_train_step.sh unpacks them.
for f in "$OUT"/train_step-* "$OUT"/lensing-diffusion; do
    case $f in *.gz) continue ;; esac
    strip "$f" && gzip -9f "$f"
done
ls -la "$OUT"
