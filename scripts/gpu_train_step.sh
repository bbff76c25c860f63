#!/usr/bin/env bash
# Issue 22's GPU measurements in one call, engine after engine, each step under its own time
# limit and printing as it goes (GPU time is short):
#   1. PyTorch (denoising-diffusion-pytorch, scripts/bench_train_step.py): f32, bf16, f16
#   2. ours on burn's LibTorch backend (tch): f32, bf16, f16
#   3. ours on burn's CUDA backend without autotune (cuda-untuned): f32 with the kernel cache
#      cold, then warm (second process, same cache), then bf16 and f16 warm-ish
#   4. ours on burn's CUDA backend with autotune (cuda): f32 (cache on)
#   5. the end-to-end run: `pipeline` with the DeepLense preset at 128x128, ~5 minutes of
#      training on simulated Model I images, DPM-Solver++ sampling, evaluation, report
# Each bench prints time to first step ("after start" = from the process's start) and the
# steady-state images/s of the DeepLense training step and forward at batch 24. GPU memory in
# use is sampled every 200 ms into $LOG_DIR/smi.csv; the peak of each step is printed after it.
#
#   bash scripts/build_gpu_bins.sh target/gpu-bins      # on the CPU machine
#   bash scripts/gpu_train_step.sh target/gpu-bins      # on the GPU machine
#
# Needs: an NVIDIA driver; for 1, python3 with torch and denoising-diffusion-pytorch 2.3.4; for 2,
# the same torch version as the build's (2.9; its lib folder is put on LD_LIBRARY_PATH).
# Variables: STEPS ("pytorch tch cuda-untuned cuda e2e"), BATCH (24), RUNS (10), WARMUP (3),
# DTYPES ("f32 bf16 f16"), STEP_TIMEOUT (s per bench process, 150), E2E_MINUTES (5),
# E2E_TIMEOUT (s, 600), LOG_DIR (target/gpu-bench).
set -u
cd "$(dirname "$0")/.."
BINS=${1:-target/gpu-bins}
STEPS=${STEPS:-"pytorch tch cuda-untuned cuda e2e"}
BATCH=${BATCH:-24}
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-3}
DTYPES=${DTYPES:-"f32 bf16 f16"}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
E2E_MINUTES=${E2E_MINUTES:-5}
E2E_TIMEOUT=${E2E_TIMEOUT:-600}
LOG_DIR=${LOG_DIR:-target/gpu-bench}
mkdir -p "$LOG_DIR"
# Binaries carried gzipped (scripts/build_gpu_bins.sh) are unpacked next to the logs.
if ls "$BINS"/*.gz >/dev/null 2>&1; then
    mkdir -p "$LOG_DIR/bin"
    for f in "$BINS"/*.gz; do gunzip -c "$f" > "$LOG_DIR/bin/$(basename "${f%.gz}")"; done
    chmod +x "$LOG_DIR"/bin/*
    BINS=$LOG_DIR/bin
fi
CACHE=$(mktemp -d)   # the kernel cache: cold at the start of this call
export LENSING_DIFFUSION_CACHE=$CACHE

echo "== machine $(date +%T)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
nproc
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 200 \
    > "$LOG_DIR/smi.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null' EXIT
mark() { wc -l < "$LOG_DIR/smi.csv"; }
# Peak GPU memory (MiB) sampled since line $1 of smi.csv.
peak() { tail -n +"$(( $1 + 1 ))" "$LOG_DIR/smi.csv" | awk -F', ' '{v=$2+0; if (v>m) m=v} END {print "   peak GPU memory in use: " m+0 " MiB"}'; }

bench() { # engine dtype [extra env...]
    local engine=$1 dtype=$2; shift 2
    local bin="$BINS/train_step-$engine"
    [ -x "$bin" ] || { echo "   no $bin: skipped"; return; }
    echo "-- $engine $dtype $* $(date +%T)"
    local m; m=$(mark)
    env "$@" TRAIN_STEP_BACKEND="${engine%%-*}" TRAIN_STEP_DTYPE="$dtype" TRAIN_STEP_TRAIN_BATCH="$BATCH" \
        TRAIN_STEP_FORWARD_BATCH="$BATCH" TRAIN_STEP_QUICK="$RUNS" TRAIN_STEP_WARMUP="$WARMUP" \
        timeout "$STEP_TIMEOUT" "$bin" deeplense 2>&1 | grep --line-buffered -v "^\s*$"
    echo "   exit ${PIPESTATUS[0]}"
    peak "$m"
}

for step in $STEPS; do
    case $step in
    pytorch)
        echo "== pytorch (denoising-diffusion-pytorch) $(date +%T)"
        for p in $DTYPES; do
            echo "-- precision $p, $(date +%T)"
            m=$(mark)
            PYTHONUNBUFFERED=1 timeout "$STEP_TIMEOUT" python3 scripts/bench_train_step.py --device cuda \
                --precision "$p" --cases deeplense --train-batch "$BATCH" --forward-batch "$BATCH" \
                --runs "$RUNS" --warmup "$WARMUP" 2>&1 | grep -v Warning
            peak "$m"
        done ;;
    tch)
        echo "== ours, tch (burn LibTorch) $(date +%T)"
        TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
        TORCH_VER=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null)
        echo "   torch $TORCH_VER in $TORCH_LIB (the binaries were built against 2.9)"
        for d in $DTYPES; do bench tch "$d" LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"; done ;;
    cuda-untuned)
        echo "== ours, cuda-untuned (burn CUDA, no autotune) $(date +%T)"
        bench cuda-untuned f32 TRAIN_STEP_KERNEL_CACHE="$CACHE/untuned"   # cold cache
        bench cuda-untuned f32 TRAIN_STEP_KERNEL_CACHE="$CACHE/untuned"   # warm cache
        for d in $DTYPES; do [ "$d" = f32 ] || bench cuda-untuned "$d" TRAIN_STEP_KERNEL_CACHE="$CACHE/untuned"; done ;;
    cuda)
        echo "== ours, cuda (burn CUDA, autotune) $(date +%T)"
        bench cuda f32 TRAIN_STEP_KERNEL_CACHE="$CACHE/tuned" ;;
    e2e)
        echo "== end to end: pipeline, DeepLense preset, 128x128, $E2E_MINUTES min of training $(date +%T)"
        TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
        m=$(mark)
        LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}" timeout "$E2E_TIMEOUT" "$BINS/lensing-diffusion" pipeline \
            --backend "${E2E_BACKEND:-tch}" --preset deeplense --image-size 128 --train-images 10000 \
            --steps 1000000 --train-minutes "$E2E_MINUTES" --num-generated 1000 --eval-images 1000 \
            --sample-batch 100 --name gpu-e2e 2>&1 | grep --line-buffered -v "^\s*$"
        echo "   exit ${PIPESTATUS[0]}"
        peak "$m"
        ls runs/gpu-e2e 2>/dev/null
        # On the device tool, $OUT comes back: the report and its images.
        [ -n "${OUT:-}" ] && cp -r runs/gpu-e2e "$OUT/" 2>/dev/null ;;
    *) echo "unknown step $step" ;;
    esac
done
[ -n "${OUT:-}" ] && cp "$LOG_DIR/smi.csv" "$OUT/" 2>/dev/null
echo "== done $(date +%T)"
