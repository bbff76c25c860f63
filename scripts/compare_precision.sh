#!/usr/bin/env bash
# f32 against --precision bf16 on this CPU, side by side in one run (docs/PERFORMANCE.md,
# "bf16 convolutions"): the small preset trained STEPS steps from one seed in each precision
# (loss trajectories, wall time), then each final EMA sampled in both precisions from one seed
# (how far the samples move).
#
#   cargo build --release
#   PYTHON=/path/to/python-with-numpy scripts/compare_precision.sh [STEPS] [OUT]
set -euo pipefail
steps=${1:-400}
out=${2:-runs/precision}
bin=${BIN:-target/release/lensing-diffusion}
python=${PYTHON:-python3}
mkdir -p "$out"
ck=$(printf 'step-%07d' "$steps")
for p in f32 bf16; do
    rm -rf "${out:?}/$p"
    start=$(date +%s.%N)
    "$bin" train --preset small --precision "$p" --simulate 3000 --steps "$steps" --seed 7 \
        --sample-every 0 --checkpoint-every "$steps" --out "$out/$p" >/dev/null
    echo "train $p: $(echo "$(date +%s.%N) - $start" | bc) s"
done
for model in f32 bf16; do
    for p in f32 bf16; do
        start=$(date +%s.%N)
        "$bin" sample --checkpoint "$out/$model/checkpoints/$ck/ema.bpk" --num 64 --sampler ddim --steps 50 \
            --eta 0 --seed 3 --precision "$p" --out "$out/s-$model-$p.npy" >/dev/null 2>&1
        echo "sample (model $model) in $p: $(echo "$(date +%s.%N) - $start" | bc) s"
    done
done
"$python" - "$out" <<'PY'
import sys, csv, numpy as np
out = sys.argv[1]
def losses(p):
    with open(f"{out}/{p}/loss.csv") as f:
        rows = [r for r in csv.reader(f) if r and r[0].isdigit()]
    return np.array([float(r[1]) for r in rows])
a, b = losses("f32"), losses("bf16")
n = min(len(a), len(b))
print(f"steps {n}; first step loss f32 {a[0]:.6f} bf16 {b[0]:.6f} (|diff| {abs(a[0] - b[0]):.2e})")
w = 50
print(f"window | mean loss f32 | mean loss bf16 | diff | noise (std of a step / sqrt({w}))")
for s in range(0, n - w + 1, w):
    x, y = a[s:s + w], b[s:s + w]
    noise = np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / w)
    print(f"{s + 1}-{s + w} | {x.mean():.4f} | {y.mean():.4f} | {y.mean() - x.mean():+.4f} | {noise:.4f}")
s = {k: np.load(f"{out}/s-{k}.npy") for k in ["f32-f32", "f32-bf16", "bf16-f32", "bf16-bf16"]}
def cmp(x, y, what):
    d = np.abs(s[x] - s[y])
    print(f"{what}: mean |diff| {d.mean():.5f}, max {d.max():.4f} (pixel range [0, 1])")
cmp("f32-f32", "f32-bf16", "one f32-trained model sampled in f32 vs bf16")
cmp("bf16-bf16", "bf16-f32", "one bf16-trained model sampled in bf16 vs f32")
cmp("f32-f32", "bf16-bf16", "f32-trained in f32 vs bf16-trained in bf16")
PY
