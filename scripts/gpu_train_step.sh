#!/usr/bin/env bash
# Side-by-side GPU throughput of the DeepLense preset (Unet(64, (1,2,4,8)), 128x128, the preset's
# batch 24): our training step and forward (benches/train_step.rs on burn's CUDA backend, in
# f32, bf16 and f16) next to denoising-diffusion-pytorch's (scripts/bench_train_step.py on the
# same GPU, f32 and autocast bf16 / f16). Results: docs/performance-history.md, "GPU".
#
#   bash scripts/gpu_train_step.sh                  # builds the bench with --features cuda
#   FEATURES=cuda-untuned bash scripts/gpu_train_step.sh   # without burn's kernel autotuning
#   TRAIN_STEP_BIN=path/to/train_step-HASH bash scripts/gpu_train_step.sh   # a prebuilt bench
#
# Needs an NVIDIA GPU with its driver, and python3 with torch and denoising-diffusion-pytorch
# 2.3.4 (`pip install denoising-diffusion-pytorch==2.3.4`). A bench built on another machine:
#   CUDARC_CUDA_VERSION=13000 cargo bench --features cuda --bench train_step --no-run
# (CUDARC_CUDA_VERSION: the CUDA version of the target machine's driver, here 13.0; without it
# cudarc assumes the newest it knows when no CUDA toolkit is installed at build time).
# Variables: FEATURES (cuda; or cuda-untuned), BATCH (24), RUNS (10 timed repetitions), WARMUP (3), DTYPES ("f32 bf16 f16"),
# RUST_TIMEOUT / PY_TIMEOUT (seconds per run), LOG_DIR (target/gpu-bench).
set -u
cd "$(dirname "$0")/.."
BATCH=${BATCH:-24}
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-3}
DTYPES=${DTYPES:-"f32 bf16 f16"}
RUST_TIMEOUT=${RUST_TIMEOUT:-150}
PY_TIMEOUT=${PY_TIMEOUT:-90}
LOG_DIR=${LOG_DIR:-target/gpu-bench}
mkdir -p "$LOG_DIR"

BIN=${TRAIN_STEP_BIN:-}
if [ -z "$BIN" ]; then
    cargo bench --features "${FEATURES:-cuda}" --bench train_step --no-run || exit 1
    BIN=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)
fi

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
nproc
# GPU memory in use, sampled every 200 ms over the whole script (peak per phase: see the times).
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 200 \
    > "$LOG_DIR/smi.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT

echo "== pytorch (denoising-diffusion-pytorch)"
for p in $DTYPES; do
    echo "-- precision $p, $(date +%T)"
    PYTHONUNBUFFERED=1 timeout "$PY_TIMEOUT" python3 scripts/bench_train_step.py --device cuda \
        --precision "$p" --cases deeplense --train-batch "$BATCH" --forward-batch "$BATCH" \
        --runs "$RUNS" --warmup "$WARMUP" 2>&1 | grep -v Warning
done

echo "== ours (burn $(grep -m1 -A1 'name = "burn"' Cargo.lock | sed -n 's/version = //p'), cuda)"
for d in $DTYPES; do
    echo "-- dtype $d, $(date +%T)"
    TRAIN_STEP_BACKEND=cuda TRAIN_STEP_DTYPE="$d" TRAIN_STEP_TRAIN_BATCH="$BATCH" \
        TRAIN_STEP_FORWARD_BATCH="$BATCH" TRAIN_STEP_QUICK="$RUNS" TRAIN_STEP_WARMUP="$WARMUP" \
        timeout "$RUST_TIMEOUT" "$BIN" deeplense 2>&1 | tail -n 40
    echo "   exit ${PIPESTATUS[0]}"
done
echo "== done $(date +%T)"
